import json

import pytest

torch = pytest.importorskip("torch")

from edge_runtime.evaluation.cli import main as edge_eval  # noqa: E402
from edge_runtime.model.build import build_model, preset_spec  # noqa: E402
from edge_runtime.model.io import save_model  # noqa: E402
from edge_runtime.model.tokenizer import save_tokenizer, train_tokenizer  # noqa: E402
from edge_runtime.contracts.task_enums import Category  # noqa: E402
from edge_runtime.tasks.prompts import build_mpc_prompt  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    corpus = [build_mpc_prompt("Drive smoothly.") + '<answer>{"qv": 1.5}</answer> True False 0123456789']
    tok = train_tokenizer(corpus * 4, vocab_size=300)
    spec = preset_spec("qwen2-1m", vocab_size=tok.get_vocab_size())
    save_tokenizer(tok, out / "tok.json")
    save_model(build_model(spec, seed=0), out / "model", spec, tokenizer_json=out / "tok.json")
    return out / "model"


@pytest.mark.slow
def test_edge_eval_writes_a_valid_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = edge_eval(["--model", str(tiny_model_dir), "--task", "both", "--decision-examples", "2",
                    "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    mpc, dec = report["mpc"], report["decision"]
    assert report["parameters"] > 0 and report["file_size"] > 0
    assert mpc["track"] == "hairpin" and mpc["instructions"] == len(mpc["rows"]) == 20
    assert set(mpc["adaptability"]) == {c.value for c in Category} | {"overall"}
    # An untrained model answers garbage: every failure is counted by reason and scores the worst case.
    assert sum(mpc["parse_failures"].values()) == round(mpc["parse_failure_rate"] * 20)
    assert all(r["adaptability"] == -4.0 for r in mpc["rows"] if r["parse_failure"])
    assert dec["examples"] == 16 and 0.0 <= dec["accuracy"] <= 1.0
    assert len(dec["rows"]) == 16 and dec["accuracy"] == sum(r["correct"] for r in dec["rows"]) / 16
    assert all(r["summary"].startswith("Summary: ") and isinstance(r["label"], bool) for r in dec["rows"])
    assert "control adaptability" in capsys.readouterr().out


def test_edge_eval_errors_are_one_line(tmp_path, capsys):
    assert edge_eval(["--model", str(tmp_path / "missing")]) == 2
    assert "model not found" in capsys.readouterr().err
    assert edge_eval(["--model", str(tmp_path), "--track", "nope"]) == 2
    assert "unknown track" in capsys.readouterr().err


def test_device_and_batch_size_flags(tiny_model_dir, tmp_path, capsys):
    """--device/--batch-size are for model directories; an .onnx file runs on the CPU, as on the vehicle."""
    import torch

    from edge_runtime.evaluation.cli import load_policy

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")
    assert edge_eval(["--model", str(onnx), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda is for model directories" in err and len(err.splitlines()) == 1
    assert edge_eval(["--model", str(tiny_model_dir), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert edge_eval(["--model", str(tiny_model_dir), "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    policy = load_policy(str(tiny_model_dir), device="auto", batch_size=3)
    assert policy.batch_size == 3
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert next(policy.model.parameters()).device.type == expected
    # batching does not change greedy answers
    prompts = [build_mpc_prompt(t) for t in ("Drive smoothly.", "Go fast.", "Stay centred.", "Slow down.")]
    one = load_policy(str(tiny_model_dir), device="cpu", batch_size=1).generate(prompts, 6)
    assert [g.text for g in policy.generate(prompts, 6)] == [g.text for g in one]


# -- splits, default tracks and oracle tables, intervals (no model: fast) ------------------------
class _FakePolicy:
    """Answers every MPC prompt with one parameter set and every decision prompt with True."""

    name = "fake"

    def generate(self, prompts, max_new_tokens):
        from edge_runtime.contracts.generation import Generation

        return [Generation(text="<answer>True</answer>" if "Summary" in p else '<answer>{"qv": 1.5}</answer>',
                           prompt_tokens=1, emitted_tokens=3) for p in prompts]

    def parameter_count(self):
        return 1

    def file_size(self):
        return 1


@pytest.fixture
def fast_closed_loop(monkeypatch):
    """Replace the closed-loop run by a score that depends on the instruction (no simulator)."""
    import edge_runtime.evaluation.report as report_module
    from edge_runtime.tasks.closed_loop import EvalResult

    def fake_evaluate(params, ins, config):
        score = {"centreline": 0.5, "smooth": -0.5}.get(ins.category.value, 0.1) + 0.01 * len(ins.text) % 0.2
        return EvalResult(ins, params, 1.0 - score, 1.0, score, False, False, 1.0, 10.0, 0, 0.0)
    monkeypatch.setattr(report_module, "evaluate", fake_evaluate)


@pytest.mark.parametrize("split, track, oracle", [("validation", "hairpin", True), ("test", "esses", True)])
def test_split_picks_its_track_and_oracle_and_every_figure_has_an_interval(split, track, oracle, fast_closed_loop):
    from edge_runtime.evaluation.report import EvalSettings, evaluate_mpc, format_report
    from edge_runtime.tasks.oracle_table import OracleTable, default_table_path

    settings = EvalSettings(split=split)
    assert settings.track == track
    path = default_table_path(split, track)
    table = OracleTable.load(path) if path.exists() else None
    if oracle:
        assert table is not None
    m = evaluate_mpc(_FakePolicy(), settings, table)
    assert m["split"] == split and m["track"] == track
    assert set(m["adaptability_ci"]) == set(m["adaptability"]) == {c.value for c in Category} | {"overall"}
    for key, (lo, hi) in m["adaptability_ci"].items():
        assert lo <= m["adaptability"][key] <= hi
    assert m["ci"]["resamples"] == 10_000 and m["ci"]["seed"] == 0
    if table is not None:
        lo, hi = m["fraction_of_oracle_ci"]
        assert lo <= m["fraction_of_oracle"] <= hi
        assert set(m["oracle_adaptability_ci"]) == set(m["oracle_adaptability"])
    text = format_report({"model": "fake", "parameters": 1, "file_size": 1, "mpc": m})
    lo, hi = m["adaptability_ci"]["overall"]
    assert f"{m['adaptability']['overall']:+.3f} [{lo:+.3f}, {hi:+.3f}]" in text
    assert "10000 resamples, seed 0" in text


def test_decision_accuracy_with_intervals_on_the_test_split():
    from edge_runtime.evaluation.report import EvalSettings, evaluate_decision, format_report

    d = evaluate_decision(_FakePolicy(), EvalSettings(split="test", decision_per_instruction=4))
    assert d["track"] == "esses" and d["examples"] == 32
    assert d["accuracy"] == 0.5  # always True on a balanced set
    assert d["accuracy_ci"][0] <= 0.5 <= d["accuracy_ci"][1]
    for key, value in d["accuracy_by_instruction"].items():
        lo, hi = d["accuracy_by_instruction_ci"][key]
        assert value == 0.5 and lo <= value <= hi and hi - lo >= 0.5  # 4 examples: a wide interval
    text = format_report({"model": "fake", "parameters": 1, "file_size": 1, "decision": d})
    assert "accuracy 50.0% [" in text and "dont_move" in text


def test_cli_split_defaults(monkeypatch, tmp_path, capsys):
    import edge_runtime.evaluation.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "load_policy", lambda path, constrained=False, **kw: _FakePolicy())
    monkeypatch.setattr(cli, "evaluate_mpc", lambda policy, settings, oracle: seen.update(
        settings=settings, oracle=oracle) or {})
    monkeypatch.setattr(cli, "format_report", lambda report: "")
    assert cli.main(["--model", "x", "--task", "mpc"]) == 0
    assert seen["settings"].split == "validation" and seen["settings"].track == "hairpin"
    assert seen["oracle"] is not None and seen["oracle"].eval_config.track == "hairpin"
    assert cli.main(["--model", "x", "--task", "mpc", "--split", "test"]) == 0
    assert seen["settings"].track == "esses"
    assert cli.main(["--model", "x", "--task", "mpc", "--split", "validation", "--track", "oval"]) == 0
    assert seen["oracle"] is None  # no table of the validation instructions on oval
    # a table of another track is refused with one line
    from edge_runtime.tasks.oracle_table import default_table_path

    assert cli.main(["--model", "x", "--task", "mpc", "--split", "test",
                     "--oracle", str(default_table_path("validation", "hairpin"))]) == 2
    assert "for track 'hairpin', not 'esses'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--model", "x", "--split", "heldout"])
