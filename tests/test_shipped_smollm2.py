"""The shipped SmolLM2 controllers, models/dense.onnx and models/pruned50.onnx (SmolLM2-135M-Instruct
fine-tuned on the driving tasks; the second pruned while it was fine-tuned): each is the export of
the weights its card names, its reports belong to it, it is the 4-bit file with one quantized
embedding table, it renders ChatML, it answers a validation instruction with parseable parameters
under constrained decoding; the pruned one is physically smaller with its first and last layers
and GQA intact; models/ stays within its size budget."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge_runtime.contracts.arch_spec import ArchSpec
from edge_runtime.decoding.generator import OnnxGenerator
from edge_runtime.prune.config import PruneConfig, prunable_parameters
from edge_runtime.sim.tracks import SPLIT_TRACKS
from edge_runtime.tasks.answers import parse_mpc_answer
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.tasks.prompts import build_mpc_prompt

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SHIPPED = ("dense", "pruned50")
#: the reports each card directory holds (the fp32 weights' own reports where they were evaluated)
REPORTS = {"dense": ("eval_test.json", "eval_test_onnx.json", "eval_validation.json", "eval_validation_onnx.json"),
           "pruned50": ("eval_test_onnx.json", "eval_validation_onnx.json")}
#: models/ in git must stay small enough to clone (DEVELOPERS.md: about 250 MB in all)
MODELS_BUDGET_BYTES = 250 * 10**6


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request) -> tuple[str, OnnxGenerator]:
    return request.param, OnnxGenerator(MODELS / f"{request.param}.onnx", threads=1, constrained=True)


def test_the_file_is_the_export_of_the_card_model(shipped):
    name, generator = shipped
    card_dir = MODELS / name
    meta = json.loads((card_dir / "edge_runtime_meta.json").read_text())
    spec = ArchSpec.load(card_dir / "arch_spec.json")
    assert generator.source_sha256 == meta["model_sha256"]
    assert generator.spec == spec and spec.tie_word_embeddings and spec.num_layers == 30
    assert generator.chat_format.kind == "chatml"
    quant = json.loads(generator.metadata["edge_runtime.quantization"])
    assert (quant["kind"], quant["head_bits"], quant["accuracy_level"]) == ("int4", 8, 4)
    assert quant["embedding"] == "8-bit GatherBlockQuantized, shared with the LM head"  # one table, stored once
    card = (card_dir / "README.md").read_text()
    assert meta["model_sha256"] in card and f"{spec.num_parameters():,}" in card
    assert 0 < card.index("## Test scores") < card.index("## Validation scores")


def test_pruned50_removed_half_the_prunable_parameters_and_kept_its_shape_rules():
    dense = ArchSpec.load(MODELS / "dense" / "arch_spec.json")
    pruned = ArchSpec.load(MODELS / "pruned50" / "arch_spec.json")
    cfg = PruneConfig()
    removed = 1 - prunable_parameters(pruned, cfg) / prunable_parameters(dense, cfg)
    assert removed >= 0.45
    assert pruned.layers[0] == dense.layers[0] and pruned.layers[-1] == dense.layers[-1]  # kept dense
    assert all(layer.num_q_heads % layer.num_kv_heads == 0 for layer in pruned.layers)
    assert all(layer.intermediate_size % 32 == 0 for layer in pruned.layers)  # --round-to 32
    assert (MODELS / "pruned50.onnx").stat().st_size < 0.9 * (MODELS / "dense.onnx").stat().st_size  # physically smaller


@pytest.mark.parametrize("name, report_name", [(n, r) for n in SHIPPED for r in REPORTS[n]])
def test_reports_belong_to_this_model(name, report_name):
    card_dir = MODELS / name
    meta = json.loads((card_dir / "edge_runtime_meta.json").read_text())
    spec = ArchSpec.load(card_dir / "arch_spec.json")
    report = json.loads((card_dir / report_name).read_text())
    split = "test" if "test" in report_name else "validation"
    assert report["parameters"] == spec.num_parameters()
    for task in ("mpc", "decision"):
        assert (report[task]["split"], report[task]["track"]) == (split, SPLIT_TRACKS[split])
    if report_name.endswith("_onnx.json"):  # the shipped file itself, as the vehicle decodes it
        assert report["source_sha256"] == meta["model_sha256"] and report["constrained"]
        assert report["quantization"]["kind"] == "int4" and report["quantization"]["head_bits"] == 8
        assert report["mpc"]["parse_failure_rate"] == 0.0


def test_answers_a_validation_instruction_with_parameters(shipped):
    _, generator = shipped
    instruction = instruction_set("validation")[0]
    result = generator.generate(build_mpc_prompt(instruction.text))
    parsed = parse_mpc_answer(result.text)
    assert parsed.ok, result.text


def test_models_directory_fits_its_budget():
    tracked = subprocess.run(["git", "ls-files", "-z", "models"], cwd=ROOT, capture_output=True, check=True).stdout
    files = [ROOT / name for name in tracked.decode().split("\0") if name]
    assert files and sum(f.stat().st_size for f in files if f.is_file()) < MODELS_BUDGET_BYTES
    assert not any(f.name == "model.safetensors" and f.parent.parent == MODELS for f in files)  # no fp32 weights
