"""Prompt builders: content, the constant parameter table, context, and a decision history text
from which the labelling rules can be recomputed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from edge_runtime.contracts.answer_format import PROMPT_VERSION
from edge_runtime.control.params import PARAM_NAMES, PARAM_SPECS
from edge_runtime.tasks.decision import StateHistory, generate_decision_dataset
from edge_runtime.tasks.history_reader import parse_history_text, rules_from_text
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.tasks.prompts import (DECISION_CUE, HISTORY_STEP_S, MPC_CUE, PARAM_TABLE, SHORT_MEANINGS,
                                        PromptContext, build_decision_prompt, build_mpc_prompt, history_text)


# ---------------------------------------------------------------------------------------------
# MPC prompt
# ---------------------------------------------------------------------------------------------
def test_version_and_cues():
    assert PROMPT_VERSION == "2"
    assert MPC_CUE == "Answer:\n" and DECISION_CUE == "Answer:\n"


def test_param_table_is_compact_and_complete():
    lines = PARAM_TABLE.split("\n")
    assert len(lines) == len(PARAM_SPECS)
    for line, spec in zip(lines, PARAM_SPECS):
        assert line.startswith(f"{spec.name} [{spec.low:g},{spec.high:g}] {spec.default:g} ")
        assert 2 <= len(SHORT_MEANINGS[spec.name].split()) <= 5
        assert len(line) <= 60
    assert set(SHORT_MEANINGS) == set(PARAM_NAMES)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_mpc_prompt_content(split):
    for ins in instruction_set(split):
        p = build_mpc_prompt(ins.text)
        assert p.endswith(MPC_CUE)
        assert f"Instruction: {ins.text}\n" in p
        assert p.count(PARAM_TABLE) == 1
        assert p.split("\n")[0].startswith("You tune the MPC")
        assert "<answer>" in p and "</answer>" in p  # the format description
        assert "Now:" not in p
        assert len(p) <= 720


def test_table_identical_in_every_prompt():
    prompts = [build_mpc_prompt(i.text, PromptContext(1.0, "oval") if k % 2 else None)
               for k, i in enumerate(instruction_set("train") + instruction_set("validation")
                                     + instruction_set("test"))]
    tables = {p[p.index("\n") + 1:p.index("\n") + 1 + len(PARAM_TABLE)] for p in prompts}
    assert tables == {PARAM_TABLE}


def test_mpc_prompt_context_is_optional():
    base = build_mpc_prompt("Drive smoothly.")
    assert build_mpc_prompt("Drive smoothly.", PromptContext()) == base  # empty context adds nothing
    both = build_mpc_prompt("Drive smoothly.", PromptContext(current_speed=2.34, track="oval"))
    assert "Now: speed 2.3 m/s, track oval.\nInstruction: Drive smoothly.\n" in both
    assert "Now: speed -1.0 m/s." in build_mpc_prompt("x", PromptContext(current_speed=-1))
    assert "Now: track hairpin." in build_mpc_prompt("x", PromptContext(track="hair\npin".replace("\n", "")))
    assert "speed -0.0" not in build_mpc_prompt("x", PromptContext(current_speed=-0.01))
    assert len(both) <= 760


def test_prompt_context_validation():
    with pytest.raises(ValueError, match="current_speed"):
        PromptContext(current_speed=float("nan"))
    with pytest.raises(ValueError, match="current_speed"):
        PromptContext(current_speed=True)
    with pytest.raises(ValueError, match="track"):
        PromptContext(track=3)  # type: ignore[arg-type]
    ctx = PromptContext(track="  my\ntrack ")
    assert ctx.track == "my track"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.track = "x"  # type: ignore[misc]


def test_instruction_is_one_line_and_required():
    p = build_mpc_prompt("  Drive\n smoothly. \n")
    assert "Instruction: Drive smoothly.\n" in p
    with pytest.raises(ValueError, match="empty"):
        build_mpc_prompt(" \n ")
    with pytest.raises(TypeError):
        build_mpc_prompt(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Decision prompt: a hand-made history and the rules recomputed from the text
# ---------------------------------------------------------------------------------------------
def _history(n: int = 30, crashed_at: int | None = None, race: bool = True) -> StateHistory:
    k = np.arange(n)
    v = 1.0 + 0.05 * k  # 1.00 ... 2.45 m/s
    d = 0.3 * np.sin(k / 3.0)
    wl = 0.8 - d
    crashed = [crashed_at is not None and i >= crashed_at for i in range(n)]
    return StateHistory(s=0.1 * k, d=d, v=v, vs=v, wall_left=wl, wall_right=1.6 - wl, crashed=crashed,
                        race_d=0.1 * np.cos(k / 3.0) if race else None, track="oval")


def test_decision_prompt_numbers_and_layout():
    h = _history()
    p = build_decision_prompt(h, "Drive  forward.")
    assert p.endswith("Instruction: Drive forward.\nDoes the car follow it? Reply <answer>True</answer> or "
                      "<answer>False</answer>.\n" + DECISION_CUE)
    assert p.startswith(f"Last 3 s, every {HISTORY_STEP_S:g} s, oldest first.")
    assert "Crashed: no" in p
    cols, crashed = parse_history_text(p)
    idx = list(range(29, -1, -3))[::-1]  # every 0.3 s, newest sample included
    assert len(cols["v"]) == 10 and idx[-1] == 29
    np.testing.assert_allclose(cols["v"], np.round(h.arr("v")[idx], 2), atol=1e-9)
    np.testing.assert_allclose(cols["d"], np.round(h.arr("d")[idx], 2), atol=1e-9)
    np.testing.assert_allclose(cols["wl"], np.round(h.arr("wall_left")[idx], 2), atol=1e-9)
    np.testing.assert_allclose(cols["dr"], np.round(h.arr("d")[idx] - h.arr("race_d")[idx], 2), atol=1e-9)
    # the statistics of the rules, recomputed from the text, match the shown samples
    assert cols["v"].mean() == pytest.approx(h.arr("v")[idx].mean(), abs=0.005)
    assert cols["v"].mean() == pytest.approx(h.arr("v").mean(), abs=0.05)  # the full window, 3:1 subsampled
    assert np.abs(cols["v"]).max() == pytest.approx(2.45)
    assert "245 " in p.split("\n")[-7]  # newest row: v = 2.45 m/s -> 245 cm/s
    assert not crashed
    assert len(p) <= 700


def test_decision_prompt_crash_no_race_and_negative_zero():
    h = _history(crashed_at=28, race=False)
    p = build_decision_prompt(h, "Reverse.")
    assert "Crashed: yes" in p
    assert p.split("\n")[1] == "d v wl" and "dr" not in p.split("\n")[0]
    tiny = StateHistory(s=[0, 0], d=[-0.001, 0.0], v=[-0.004, 0], vs=[0, 0], wall_left=[1, 1], wall_right=[1, 1])
    text = history_text(tiny)
    assert "-0" not in text and "\n0 0 100\n" in text


def test_history_text_other_rates():
    n = 60  # 20 Hz over 3 s -> every 6th sample
    h = StateHistory(s=np.arange(n) * 0.1, d=np.zeros(n), v=np.arange(n) / 10.0, vs=np.zeros(n),
                     wall_left=np.ones(n), wall_right=np.ones(n), sample_hz=20.0)
    text = history_text(h)
    assert text.startswith("Last 3 s, every 0.3 s,")
    cols, _ = parse_history_text(text + "\n")
    np.testing.assert_allclose(cols["v"], np.arange(5, 60, 6) / 10.0)


@pytest.fixture(scope="module")
def decision_sets():
    return {split: generate_decision_dataset(n_per_instruction=12, split=split) for split in ("train", "validation", "test")}


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_rules_recoverable_from_text(decision_sets, split):
    data = decision_sets[split]
    prompts = [build_decision_prompt(ex.history, ex.phrasing) for ex in data]
    agree = [rules_from_text(p, ex.instruction) == ex.label for p, ex in zip(prompts, data)]
    assert np.mean(agree) >= 0.97
    assert max(map(len, prompts)) <= 600
    for p, ex in zip(prompts, data):
        assert f"Instruction: {ex.phrasing}\n" in p


def test_vehicle_side_imports_no_torch():
    code = ("import sys, edge_runtime.tasks.prompts, edge_runtime.tasks.answers\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_summary_line_states_window_statistics():
    from edge_runtime.tasks.behaviours import StateHistory
    from edge_runtime.tasks.prompts import history_summary

    n = 30
    t = np.arange(n) / 10.0
    d = 0.4 * np.sin(2 * np.pi * t / 1.0)
    h = StateHistory(s=tuple(np.linspace(0, 6, n)), d=tuple(d), v=tuple(np.full(n, 2.0)), vs=tuple(np.full(n, 2.0)),
                     wall_left=tuple(1.0 - d), wall_right=tuple(1.0 + d), crashed=(False,) * n,
                     race_d=tuple(np.zeros(n)), sample_hz=10.0, track="oval")
    line = history_summary(h)
    assert line.startswith("Summary: v mean 200 min 200 max 200, d mean 0 rms 28")
    assert "sign changes 5" in line and "wl mean 100" in line and "dr rms 28" in line
