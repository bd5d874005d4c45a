"""bench/grpo_curves.py on known metrics: windows split at the prunes with their means, gzip and
plain files read alike, the PNG written, bad input one line with exit status 2."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def curves():
    spec = importlib.util.spec_from_file_location("grpo_curves", REPO / "bench" / "grpo_curves.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["grpo_curves"] = module
    spec.loader.exec_module(module)
    return module


def _rows():
    rows = [{"phase": "sft", "step": 1, "loss": 1.0}]  # not GRPO: ignored
    for step in range(1, 7):
        row = {"phase": "rl", "step": step, "reward_mean": float(step), "parse_failure_rate": 0.5 if step > 3 else 0.0}
        if step == 4:
            row["prune"] = {"target": 0.25, "achieved_ratio": 0.25, "params_after": 10}
        rows.append(row)
    return rows


def test_windows_split_at_prunes_and_both_file_kinds_read_alike(curves, tmp_path, capsys):
    plain, packed = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    text = "".join(json.dumps(r) + "\n" for r in reversed(_rows()))  # out of order on purpose
    plain.write_text(text)
    with gzip.open(packed, "wt") as fh:
        fh.write(text)
    out = tmp_path / "c" / "curves.png"
    assert curves.main(["--run", f"A={plain}", "--run", f"B={packed}", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    md = capsys.readouterr().out
    # the prune recorded in step 4's row happened after its update: it opens the window at step 5
    assert "| A | 1–4 | — | +2.50 | 0.12 |" in md and "| A | 5–6 | 0.250 of the prunable parameters | +5.50 | 0.50 |" in md
    assert "| B | 1–4 | — | +2.50 | 0.12 |" in md
    (first, second) = curves.windows(curves.load_rl_rows(plain))
    assert (first["steps"], second["steps"], second["prune"]) == (4, 2, 0.25)


@pytest.mark.parametrize("content, needle", [
    (None, "missing"),
    ('{"phase": "sft", "step": 1, "loss": 1}\n', "no GRPO rows"),
    ('{"phase": "rl", "step": 1}\n', "without step, reward_mean"),
    ("not json\n", "not a metrics.jsonl"),
])
def test_bad_input_is_one_line_and_exit_2(curves, tmp_path, capsys, content, needle):
    path = tmp_path / "m.jsonl"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "curves.png"
    assert curves.main(["--run", f"A={path}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and not out.exists()
