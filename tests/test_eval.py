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
