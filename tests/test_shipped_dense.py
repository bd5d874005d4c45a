"""The shipped main model, models/dense.onnx (SmolLM2-135M-Instruct fine-tuned on the driving tasks):
it is the export of the weights its card names, its reports belong to it, it is the 4-bit file
with one quantized embedding table, it renders ChatML, it answers a validation instruction with
parseable parameters under constrained decoding, and models/ stays within its size budget."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from edge_runtime.contracts.arch_spec import ArchSpec
from edge_runtime.decoding.generator import OnnxGenerator
from edge_runtime.sim.tracks import SPLIT_TRACKS
from edge_runtime.tasks.answers import parse_mpc_answer
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.tasks.prompts import build_mpc_prompt

ROOT = Path(__file__).resolve().parent.parent
CARD_DIR = ROOT / "models" / "dense"
ONNX = ROOT / "models" / "dense.onnx"
#: models/ in git must stay small enough to clone (DEVELOPERS.md: about 250 MB in all)
MODELS_BUDGET_BYTES = 250 * 10**6


@pytest.fixture(scope="module")
def generator() -> OnnxGenerator:
    return OnnxGenerator(ONNX, threads=1, constrained=True)


def test_the_file_is_the_export_of_the_card_model(generator):
    meta = json.loads((CARD_DIR / "edge_runtime_meta.json").read_text())
    spec = ArchSpec.load(CARD_DIR / "arch_spec.json")
    assert generator.source_sha256 == meta["model_sha256"]
    assert generator.spec == spec and spec.tie_word_embeddings and spec.num_layers == 30
    assert generator.chat_format.kind == "chatml"
    quant = json.loads(generator.metadata["edge_runtime.quantization"])
    assert (quant["kind"], quant["head_bits"], quant["accuracy_level"]) == ("int4", 8, 4)
    assert quant["embedding"] == "8-bit GatherBlockQuantized, shared with the LM head"  # one table, stored once
    card = (CARD_DIR / "README.md").read_text()
    assert meta["model_sha256"] in card and f"{spec.num_parameters():,}" in card
    assert 0 < card.index("## Test scores") < card.index("## Validation scores")


@pytest.mark.parametrize("report_name", ["eval_test.json", "eval_test_onnx.json", "eval_validation.json",
                                         "eval_validation_onnx.json"])
def test_reports_belong_to_this_model(generator, report_name):
    report = json.loads((CARD_DIR / report_name).read_text())
    split = "test" if "test" in report_name else "validation"
    assert report["parameters"] == generator.spec.num_parameters()
    for task in ("mpc", "decision"):
        assert (report[task]["split"], report[task]["track"]) == (split, SPLIT_TRACKS[split])
    if report_name.endswith("_onnx.json"):  # the shipped file itself, as the vehicle decodes it
        assert report["source_sha256"] == generator.source_sha256 and report["constrained"]
        assert report["quantization"] == json.loads(generator.metadata["edge_runtime.quantization"])
        assert report["mpc"]["parse_failure_rate"] == 0.0


def test_answers_a_validation_instruction_with_parameters(generator):
    instruction = instruction_set("validation")[0]
    result = generator.generate(build_mpc_prompt(instruction.text))
    parsed = parse_mpc_answer(result.text)
    assert parsed.ok, result.text


def test_models_directory_fits_its_budget():
    tracked = subprocess.run(["git", "ls-files", "-z", "models"], cwd=ROOT, capture_output=True, check=True).stdout
    files = [ROOT / name for name in tracked.decode().split("\0") if name]
    assert files and sum(f.stat().st_size for f in files if f.is_file()) < MODELS_BUDGET_BYTES
    assert not any(f.name == "model.safetensors" and f.parent == CARD_DIR for f in files)  # fp32 weights not shipped
