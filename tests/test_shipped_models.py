"""The tiny models shipped in models/tiny/: each loads strictly, its card and evaluation report belong
to it, and its ONNX file is the export of exactly these weights (same sha256), with the right cache
shapes."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edge_runtime.contracts.arch_spec import ArchSpec
from edge_runtime.sim.tracks import SPLIT_TRACKS

MODELS = Path(__file__).resolve().parent.parent / "models" / "tiny"
SHIPPED = ("dense", "pruned25", "pruned50", "small-dense")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_is_complete_and_consistent(name):
    from edge_runtime.model.io import load_model

    model_dir = MODELS / name
    model, spec = load_model(model_dir)  # strict shapes + sha256 of the weights
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == spec.num_parameters()
    for split in ("test", "validation"):
        track = SPLIT_TRACKS[split]
        report = json.loads((model_dir / f"eval_{split}.json").read_text())
        assert report["parameters"] == n_params, f"eval_{split}.json is the report of another model"
        for task in ("mpc", "decision"):
            assert (report[task]["split"], report[task]["track"]) == (split, track)
        assert "overall" in report["mpc"]["adaptability_ci"] and "accuracy_ci" in report["decision"]
    assert not (model_dir / "eval_heldout.json").exists(), "the former held-out report is now eval_validation.json"
    card = (model_dir / "README.md").read_text()
    # the card reports test first; validation numbers follow, labelled as such
    assert 0 < card.index("## Test scores") < card.index("## Validation scores") and f"{n_params:,}" in card
    meta = json.loads((model_dir / "edge_runtime_meta.json").read_text())
    props = {p.key: p.value for p in onnx.load(str(MODELS / f"{name}.onnx"), load_external_data=False).metadata_props}
    assert props["edge_runtime.source_sha256"] == meta["model_sha256"], f"{name}.onnx is not the export of {name}/"
    assert ArchSpec.from_dict(json.loads(props["edge_runtime.arch_spec"])) == spec


def test_pruned_models_are_smaller_non_uniform_and_gqa_intact():
    dense = ArchSpec.load(MODELS / "dense" / "arch_spec.json")
    p25 = ArchSpec.load(MODELS / "pruned25" / "arch_spec.json")
    p50 = ArchSpec.load(MODELS / "pruned50" / "arch_spec.json")
    assert dense.num_parameters() > p25.num_parameters() > p50.num_parameters()
    for spec in (p25, p50):
        assert not spec.is_uniform
        assert spec.layers[0] == dense.layers[0] and spec.layers[-1] == dense.layers[-1]  # kept dense
        assert all(layer.num_q_heads % layer.num_kv_heads == 0 for layer in spec.layers)
    small = ArchSpec.load(MODELS / "small-dense" / "arch_spec.json")
    assert small.is_uniform and abs(small.num_parameters() - p50.num_parameters()) / p50.num_parameters() < 0.01
