"""bench/bpf_smollm2_report.py on the tiny shipped models: paired retention and decision difference
on known inputs (a model against itself keeps exactly 100 % and differs by 0 points), the report
files, and bad input as one line with exit status 2."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "models" / "tiny"


@pytest.fixture(scope="module")
def report_module():
    spec = importlib.util.spec_from_file_location("bpf_smollm2_report", REPO / "bench" / "bpf_smollm2_report.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bpf_smollm2_report"] = module
    spec.loader.exec_module(module)
    return module


def test_a_model_against_itself_keeps_everything_and_the_pruned_one_is_compared_paired(report_module, tmp_path):
    out = tmp_path / "rep"
    rc = report_module.main(["--model", f"dense={TINY / 'dense'}", "--model", f"same={TINY / 'dense'}",
                             "--model", f"pruned50={TINY / 'pruned50'}", "--report", "eval_test.json",
                             "--out", str(out)])
    assert rc == 0
    doc = json.loads((out / "report.json").read_text())
    dense, same, pruned = doc["rows"]
    assert same["retention"] == pytest.approx(1.0) and same["retention_ci"] == pytest.approx([1.0, 1.0])
    assert same["decision_points"] == 0 and same["removed_per_lost_point"] is None  # nothing removed, nothing lost
    assert pruned["prunable_removed"] > 0.45 and pruned["streamed_bytes_ratio"] > 1
    ref = json.loads((TINY / "dense" / "eval_test.json").read_text())
    own = json.loads((TINY / "pruned50" / "eval_test.json").read_text())
    expected = own["mpc"]["adaptability"]["overall"] / ref["mpc"]["adaptability"]["overall"]
    assert pruned["retention"] == pytest.approx(expected)  # mean of category means, as the report's overall
    assert pruned["decision_points"] == pytest.approx(100 * (own["decision"]["accuracy"] - ref["decision"]["accuracy"]))
    lo, hi = pruned["retention_ci"]
    assert lo <= pruned["retention"] <= hi
    # a pruned model is compared with the uniform models of its size only: "same" is the reference's size
    assert doc["pairs"] == []
    md = (out / "report.md").read_text()
    assert "| pruned50 |" in md and "## Verdict" in md and "NOT met" in md
    assert "against the smaller dense" not in md
    assert (out / "score_vs_params.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, needle", [
    (["--model", "dense"], "NAME=DIR"),
    (["--model", "dense=/nonexistent/dir", "--model", "b=/nonexistent/b"], "missing"),
])
def test_bad_input_is_one_line_and_exit_2(report_module, capsys, tmp_path, args, needle):
    rc = report_module.main([*args, "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def test_seeds_of_one_method_get_a_mean_row_scored_as_edge_eval_scores_one_model(report_module, tmp_path):
    """Two identical seeds: their mean row is exactly the model's own report (the per-item averaging
    and the bootstrap reproduce edge-eval's scoring). A shifted second seed moves the mean by half the
    shift, and the method-level pair uses the mean, not each seed."""
    out = tmp_path / "rep"
    assert report_module.main(["--model", f"dense={TINY / 'dense'}", "--model", f"p@0={TINY / 'pruned50'}",
                               "--model", f"p@1={TINY / 'pruned50'}", "--report", "eval_test.json",
                               "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in doc["rows"]]
    assert names == ["dense", "p@0", "p@1", "p (mean of 2 seeds)"]
    own = json.loads((TINY / "pruned50" / "eval_test.json").read_text())
    mean = doc["rows"][3]
    assert mean["seeds"] == ["p@0", "p@1"] and mean["method"] == "p"
    assert mean["adaptability"] == pytest.approx(own["mpc"]["adaptability"]["overall"])
    assert mean["adaptability_ci"] == pytest.approx(own["mpc"]["adaptability_ci"]["overall"])
    assert mean["fraction_of_oracle"] == pytest.approx(own["mpc"]["fraction_of_oracle"])
    assert mean["fraction_of_oracle_ci"] == pytest.approx(own["mpc"]["fraction_of_oracle_ci"])
    assert mean["decision_accuracy"] == pytest.approx(own["decision"]["accuracy"])
    assert mean["decision_accuracy_ci"] == pytest.approx(own["decision"]["accuracy_ci"])
    assert mean["retention"] == pytest.approx(doc["rows"][1]["retention"])

    # a second seed whose every instruction scores 0.2 higher and that gets every decision right
    shifted = _better_copy(tmp_path / "p1")
    out2 = tmp_path / "rep2"
    assert report_module.main(["--model", f"dense={TINY / 'dense'}", "--model", f"p@0={TINY / 'pruned50'}",
                               "--model", f"p@1={shifted}", "--model", f"small={TINY / 'small-dense'}",
                               "--model", f"p25={TINY / 'pruned25'}",
                               "--report", "eval_test.json", "--out", str(out2)]) == 0
    doc = json.loads((out2 / "report.json").read_text())
    mean = next(r for r in doc["rows"] if r["name"] == "p (mean of 2 seeds)")
    assert mean["adaptability"] == pytest.approx(own["mpc"]["adaptability"]["overall"] + 0.1)
    assert mean["decision_accuracy"] == pytest.approx((own["decision"]["accuracy"] + 1.0) / 2)
    lo, hi = mean["adaptability_ci"]
    assert lo <= mean["adaptability"] <= hi
    # p25 is 14 % larger than small: not its size, so not paired with it
    assert [(p["pruned"], p["smaller_dense"]) for p in doc["pairs"]] == [("p (mean of 2 seeds)", "small")]
    (pair,) = doc["pairs"]
    small = next(r for r in doc["rows"] if r["name"] == "small")  # its adaptability is negative: no retention
    assert pair["decision_points"] == pytest.approx(100 * (mean["decision_accuracy"] - small["decision_accuracy"]))
    assert "| p (mean of 2 seeds) |" in (out2 / "report.md").read_text()


@pytest.mark.parametrize("second, needle", [("pruned25", "different architecture"), ("", "NAME@SEED")])
def test_seeds_must_share_an_architecture_and_be_named(report_module, capsys, tmp_path, second, needle):
    models = ["--model", f"dense={TINY / 'dense'}", "--model", f"p@0={TINY / 'pruned50'}"]
    models += ["--model", f"p@1={TINY / second}"] if second else ["--model", f"p@={TINY / 'pruned50'}"]
    rc = report_module.main([*models, "--report", "eval_test.json", "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def _better_copy(dst: Path) -> Path:
    """tiny pruned50's card and file at ``dst``, its test report changed so that every instruction
    scores 0.2 higher and every decision is right."""
    _copy_card(TINY / "pruned50", dst)
    dst.with_suffix(".onnx").write_bytes((TINY / "pruned50.onnx").read_bytes())
    report = json.loads((TINY / "pruned50" / "eval_test.json").read_text())
    for r in report["mpc"]["rows"]:
        r["adaptability"] += 0.2
    for r in report["decision"]["rows"]:
        r["correct"] = True
    (dst / "eval_test.json").write_text(json.dumps(report))
    return dst


def _copy_card(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_vehicle_file_record_stands_in_for_a_file_that_is_gone(report_module, tmp_path):
    """--record-vehicle-files measures DIR.onnx into DIR/vehicle_file.json; once the file is deleted the
    report reads the record and shows the same size and streamed bytes as when the file was there."""
    ref = _copy_card(TINY / "dense", tmp_path / "dense")
    (tmp_path / "dense.onnx").write_bytes((TINY / "dense.onnx").read_bytes())
    card = _copy_card(TINY / "pruned50", tmp_path / "p")
    onnx = tmp_path / "p.onnx"
    onnx.write_bytes((TINY / "pruned50.onnx").read_bytes())
    args = ["--model", f"dense={ref}", "--model", f"p={card}", "--report", "eval_test.json"]
    assert report_module.main([*args, "--record-vehicle-files", "--out", str(tmp_path / "with")]) == 0
    record = json.loads((card / "vehicle_file.json").read_text())
    assert record["file_bytes"] == onnx.stat().st_size and record["file"] == "p.onnx"
    assert len(record["sha256"]) == 64 and record["streamed_bytes"] > 0
    assert (ref / "vehicle_file.json").is_file()  # every DIR with its DIR.onnx beside it
    onnx.unlink()
    assert report_module.main([*args, "--out", str(tmp_path / "without")]) == 0
    with_file, without = (json.loads((tmp_path / d / "report.json").read_text())["rows"][1] for d in ("with", "without"))
    assert without["file_mib"] == with_file["file_mib"] and without["streamed_mib_per_token"] == with_file["streamed_mib_per_token"]
    assert without["streamed_bytes_ratio"] == with_file["streamed_bytes_ratio"]


@pytest.mark.parametrize("record, needle", [(None, "vehicle_file.json)"), ("{not json", "not a vehicle-file record"),
                                            ('{"file_bytes": 1}', "not a vehicle-file record")])
def test_a_missing_or_bad_vehicle_record_is_one_line_and_exit_2(report_module, capsys, tmp_path, record, needle):
    card = _copy_card(TINY / "pruned50", tmp_path / "p")
    if record is not None:
        (card / "vehicle_file.json").write_text(record)
    rc = report_module.main(["--model", f"dense={TINY / 'dense'}", "--model", f"p={card}", "--report", "eval_test.json",
                             "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()


def test_versus_compares_two_models_head_to_head_on_paired_differences(report_module, tmp_path):
    """A copy of pruned50 whose every instruction scores 0.2 higher and that gets every decision right,
    against pruned50: exactly +0.2 adaptability (every resample too) and the decision points it gained;
    the method name of several seeds means their seed mean; a model against itself differs by 0."""
    own = json.loads((TINY / "pruned50" / "eval_test.json").read_text())
    better = _better_copy(tmp_path / "better")
    out = tmp_path / "rep"
    assert report_module.main(["--model", f"dense={TINY / 'dense'}", "--model", f"p@0={TINY / 'pruned50'}",
                               "--model", f"p@1={TINY / 'pruned50'}", "--model", f"better={better}",
                               "--report", "eval_test.json", "--versus", "better:p", "--versus", "p@0:p@1",
                               "--out", str(out)]) == 0
    doc = json.loads((out / "report.json").read_text())
    first, second = doc["head_to_head"]
    assert (first["model"], first["baseline"]) == ("better", "p (mean of 2 seeds)")
    assert first["adaptability_difference"] == pytest.approx(0.2)
    assert first["adaptability_difference_ci"] == pytest.approx([0.2, 0.2])
    wrong = 1.0 - own["decision"]["accuracy"]
    assert first["decision_points"] == pytest.approx(100 * wrong)
    assert second["adaptability_difference"] == 0 and second["adaptability_difference_ci"] == pytest.approx([0, 0])
    assert second["decision_points"] == 0
    md = (out / "report.md").read_text()
    assert "`better` against `p (mean of 2 seeds)`, head to head (paired): control adaptability +0.200" in md
    assert "(`better` better)" in md and "not distinguishable: the interval includes 0" in md
    assert "--versus better:p" in doc["command"]


@pytest.mark.parametrize("versus, needle", [("dense", "expected A:B"), ("dense:nobody", "no model or method named 'nobody'")])
def test_a_bad_versus_is_one_line_and_exit_2(report_module, capsys, tmp_path, versus, needle):
    rc = report_module.main(["--model", f"dense={TINY / 'dense'}", "--model", f"p={TINY / 'pruned50'}",
                             "--report", "eval_test.json", "--versus", versus, "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1
    assert not (tmp_path / "rep").exists()
