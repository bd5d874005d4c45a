"""edge-run with an LLM: instruction scripts, the worker thread, loop integration, errors, signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("torch")  # the tiny test model is built and exported with torch
pytest.importorskip("onnx")

from onnx_fixtures import build_tiny_onnx, with_metadata

from edge_runtime.control.mpc import FrenetMPC, MPCConfig
from edge_runtime.control.params import DEFAULT_PARAMS
from edge_runtime.runtime.cli import main as edge_run
from edge_runtime.runtime.control_loop import ControlLoop, LoopConfig
from edge_runtime.decoding.generator import OnnxGenerator
from edge_runtime.decoding.step_api import GenerationResult
from edge_runtime.runtime.llm_worker import WORKER_ERROR, LLMWorker
from edge_runtime.runtime.scenario import (
    DEFAULT_INSTRUCTION,
    ScriptError,
    load_script,
    single_instruction,
)
from edge_runtime.sim import TrackSimConfig, TrackSimulator, make_simulator
from edge_runtime.contracts.task_enums import Category
from edge_runtime.tasks.instructions import classify_instruction

REPO = Path(__file__).resolve().parents[1]
TRACK = "oval"
VALID_2MS = '<answer>{"qv": 10, "v_min": 0.5, "v_max": 2}</answer>'


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    return build_tiny_onnx(tmp_path_factory.mktemp("tiny-onnx"))


def read_log(out: Path) -> tuple[list[dict], list[dict], dict]:
    records = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return [r for r in records if r["type"] == "control"], [r for r in records if r["type"] != "control"], summary


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("edge-run: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


# --------------------------------------------------------------------------- scripts
def test_script_formats(tmp_path):
    text = tmp_path / "s.txt"
    text.write_text("# t, instruction\n\n0, Drive on the centre line.\n2.5,  Drive at 2.5 m/s, please.\n"
                    "4, Reverse the car.  # not a comment: part of the text is fine\n")
    sc = load_script(text)
    assert [e.t for e in sc.entries] == [0.0, 2.5, 4.0]
    assert sc.entries[1].instruction.category is Category.REFERENCE_VELOCITY
    assert sc.entries[1].instruction.target_speed == 2.5 and sc.entries[1].where == f"{text}:4"
    js = tmp_path / "s.json"
    js.write_text(json.dumps([{"t": 0, "instruction": "Drive smoothly."}, {"t": 3, "instruction": "Follow the racing line."}]))
    assert [e.instruction.category for e in load_script(js).entries] == [Category.SMOOTH, Category.RACING_LINE]
    one = single_instruction("  Drive   at 3 m/s. ")
    assert len(one) == 1 and one.entries[0].t == 0 and one.entries[0].instruction.text == "Drive at 3 m/s."


@pytest.mark.parametrize("content,needles", [
    ("0, Drive smoothly.\n5, Reverse.\n3, Drive smoothly.\n", [":3:", "not after", "sort"]),
    ("0, make me a sandwich\n", [":1:", "cannot tell the category", "rephrase"]),
    ("# only\n0 Drive smoothly.\n", [":2:", "no comma"]),
    ("-1, Drive smoothly.\n", [":1:", ">= 0"]),
    ("zero, Drive smoothly.\n", [":1:", "not a number"]),
    ("0,   \n", [":1:", "empty"]),
    ("# nothing\n", ["no instruction"]),
    ('[{"t": 0, "instruction": "Drive smoothly."}, {"t": 1}]', ["entry 2", "\"instruction\""]),
    ('[{"t": 0, "instruction": "Drive smoothly."', ["not valid JSON"]),
])
def test_script_errors_name_file_and_line(tmp_path, content, needles):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(ScriptError) as exc:
        load_script(path)
    message = str(exc.value)
    assert "\n" not in message and str(path) in message
    for needle in needles:
        assert needle in message, message


def test_missing_script_file(tmp_path):
    with pytest.raises(ScriptError, match="not found"):
        load_script(tmp_path / "nope.txt")


# ---------------------------------------------------------------------- snapshot / restore
def test_snapshot_restore_continues_identically():
    from edge_runtime.sim import ControlCommand

    a = TrackSimulator(TrackSimConfig(track=TRACK, start_speed=2.0))
    cmd = ControlCommand(0.05, 0.5)
    for _ in range(10):
        a.step(cmd, 0.05)
    snap = a.snapshot()
    ref = [a.step(cmd, 0.05) for _ in range(10)]
    b = TrackSimulator(TrackSimConfig(track=TRACK))
    assert b.restore(snap) == snap.state
    assert [b.step(cmd, 0.05) for _ in range(10)] == ref


# ------------------------------------------------------------------------ worker (doubles)
class FakeGenerator:
    """Answers by instruction text; ``gate`` (an Event) holds every generation until set."""

    generation: ClassVar[dict] = {"eos_id": 0, "max_new_tokens": {"mpc": 50, "decision": 8}}
    path = "fake.onnx"

    def __init__(self, answers: dict[str, str], delay: float = 0.0, gate: threading.Event | None = None):
        self.answers, self.delay, self.gate = answers, delay, gate
        self.prompts: list[str] = []

    def generate(self, prompt: str, max_new_tokens: int) -> GenerationResult:
        self.prompts.append(prompt)
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        for key, text in self.answers.items():
            if f"Instruction: {key}" in prompt:
                if text == "RAISE":
                    raise RuntimeError("boom in the generator")
                break
        else:
            text = "no idea"
        n = 7
        return GenerationResult(text=text, token_ids=tuple(range(n)), prompt_tokens=len(prompt.split()),
                                emitted_tokens=n, time_to_first_token_s=0.002, decode_times_s=(0.001,) * (n - 1),
                                total_s=0.01, stopped_at_eos=True)


def test_worker_supersedes_queued_request_and_survives_exceptions():
    gate = threading.Event()
    outcomes = []
    got = threading.Condition()

    def deliver(o):
        with got:
            outcomes.append(o)
            got.notify_all()

    gen = FakeGenerator({"Drive smoothly.": "RAISE", "Drive at 2 m/s.": VALID_2MS}, gate=gate)
    worker = LLMWorker(gen, deliver).start()
    assert worker.max_new_tokens == 50  # from the generation metadata
    a = worker.submit(0, classify_instruction("Drive smoothly."), 0.0)
    deadline = time.time() + 5
    while not gen.prompts and time.time() < deadline:  # A is in flight, not queued
        time.sleep(0.01)
    b = worker.submit(1, classify_instruction("Reverse."), 1.0)          # queued ...
    c = worker.submit(2, classify_instruction("Drive at 2 m/s."), 2.0)   # ... and superseded by this one
    gate.set()
    with got:
        got.wait_for(lambda: len(outcomes) == 3, timeout=10)
    assert worker.stop(5)
    by_call = {o.request.call: o for o in outcomes}
    assert by_call[b.call].status == "superseded" and not by_call[b.call].generated
    assert by_call[a.call].status == WORKER_ERROR and "boom" in by_call[a.call].detail
    assert by_call[c.call].status == "answered" and by_call[c.call].params.v_max == 2.0
    s = worker.summary()
    assert s["requests"] == 3 and s["generations"] == 1 and s["superseded"] == 1
    assert s["failures"] == {WORKER_ERROR: 1} and s["emitted_tokens"] == 7
    assert s["decode_per_token"]["count"] == 6 and s["time_to_first_token"]["p50"] == pytest.approx(0.002)
    record = by_call[c.call].record("applied", 2.0, 40, by_call[c.call].params)
    assert record["type"] == "llm" and record["emitted_tokens"] == 7 and len(record["decode_times"]) == 6
    assert by_call[b.call].record("superseded", None, None, None)["type"] == "llm_superseded"


@pytest.mark.slow
def test_realtime_loop_never_waits_for_a_slow_llm():
    """Real time: the answer (0.3 s late) applies at the first step after it arrives; no step waits."""
    sim = make_simulator("track", track=TRACK)
    loop = ControlLoop(sim, FrenetMPC(sim.track, DEFAULT_PARAMS, MPCConfig(rate_hz=20)),
                       LoopConfig(rate_hz=20, duration=1.5, realtime=True, warmup_steps=0))
    worker = LLMWorker(FakeGenerator({"Drive at 2 m/s.": VALID_2MS}, delay=0.3))
    loop.attach_llm(worker, single_instruction("Drive at 2 m/s."), blocking=False)
    worker.start()
    records = []
    loop.log = type("Mem", (), {"write": lambda self, r: records.append(r)})()
    loop.run()
    assert worker.stop(5)
    control = [r for r in records if r["type"] == "control"]
    llm = [r for r in records if r["type"] == "llm"]
    # every period had a step or was dropped (a loaded machine may overrun); no step waited
    assert len(control) + sum(r["dropped"] for r in control) == 30 and all(r["llm_wait"] == 0.0 for r in control)
    assert len(llm) == 1 and llm[0]["status"] == "applied"
    k = llm[0]["applied_step"]
    assert k >= 2 and llm[0]["applied_sim_time"] >= 0.2  # 0.3 s at 20 Hz: the loop kept driving meanwhile
    assert llm[0]["requested_sim_time"] == 0.0
    assert llm[0]["applied_sim_time"] == pytest.approx(control[k - 1]["sim_time"])
    assert control[k]["param_call"] == 0 and control[k - 1]["param_call"] is None
    assert control[k]["param_age"] == pytest.approx(control[k]["sim_advance"])
    assert control[k - 1]["param_age"] == pytest.approx(control[k - 1]["sim_time"])
    assert loop.mpc.params.v_max == 2.0 and loop.summary()["llm_blocking"] is False


def test_blocking_llm_needs_a_loop_that_is_not_real_time():
    """Waiting for an answer is for deterministic fast runs; a real-time loop refuses it up front."""
    sim = make_simulator("track", track=TRACK)
    loop = ControlLoop(sim, FrenetMPC(sim.track, DEFAULT_PARAMS, MPCConfig(rate_hz=20)),
                       LoopConfig(rate_hz=20, duration=1.0, realtime=True))
    worker = LLMWorker(FakeGenerator({"Drive at 2 m/s.": VALID_2MS}))
    with pytest.raises(ValueError, match="realtime=False"):
        loop.attach_llm(worker, single_instruction("Drive at 2 m/s."), blocking=True)
    assert loop.worker is None and not worker.alive


# ------------------------------------------------------------------- edge-run, tiny model
def test_edge_run_script_writes_complete_log(tiny_onnx, tmp_path, capsys):
    script = tmp_path / "demo.txt"
    script.write_text("0, Drive on the centre line.\n1.5, Drive at 2 m/s.\n3, Follow the racing line.\n")
    out = tmp_path / "run"
    # the model's own output (not the grammar-constrained default): a random model's garbage must be
    # logged and survived, one forward pass per emitted token
    rc = edge_run(["--model", str(tiny_onnx), "--sim", "track", "--track", TRACK, "--script", str(script),
                   "--duration", "4", "--out", str(out), "--fast", "--threads", "1", "--no-constrained"])
    printed = capsys.readouterr().out
    assert rc == 0
    control, llm, summary = read_log(out)
    assert [r["step"] for r in control] == list(range(80)) and summary["steps"] == 80
    assert all({"param_age", "window", "ax", "ay", "llm_wait"} <= set(r) for r in control)
    assert [r["window"] for r in control] == [0] * 30 + [1] * 30 + [2] * 20
    assert len(llm) == 3 and [r["call"] for r in llm] == [0, 1, 2]
    for r in llm:
        assert r["type"] == "llm" and r["prompt_tokens"] > 100
        assert r["emitted_tokens"] >= 1 and len(r["decode_times"]) == r["emitted_tokens"] - 1
        assert r["time_to_first_token"] > 0 and r["total_time"] >= r["time_to_first_token"]
        assert r["status"] in ("applied", "parse_failure")
        assert (r["parse_failure"] is None) == (r["status"] == "applied")
    assert [r["requested_sim_time"] for r in llm] == pytest.approx([0.0, 1.5, 3.0])
    assert summary["llm_blocking"] is True and summary["log_records"] == 83
    s = summary["llm"]
    assert s["generations"] == 3 and s["worker_stopped"] is True
    assert s["dtype"] == "fp32" and s["kv_cache"]["layout"] in ("concat", "shared")
    assert s["failure_count"] == sum(r["status"] == "parse_failure" for r in llm) == sum(s["failures"].values())
    assert all(s[k]["count"] > 0 and s[k]["p99"] > 0 for k in ("time_to_first_token", "total"))
    windows = summary["windows"]
    assert [w["category"] for w in windows] == ["centreline", "reference_velocity", "racing_line"]
    assert [w["steps"] for w in windows] == [30, 30, 20]
    for w in windows:
        assert w["error"] >= 0 and w["default_error"] >= 0 and w["improvement"] is not None
    # A random model's garbage never applies: the default parameters drive every window, so the
    # live error matches the default re-simulation (warm vs cold MPC start aside).
    if all(r["status"] == "parse_failure" for r in llm):
        assert windows[0]["improvement"] == pytest.approx(0.0, abs=1e-6)
        for w in windows[1:]:
            assert w["error"] == pytest.approx(w["default_error"], rel=0.1, abs=0.02)
    assert "LLM first token" in printed and "LLM per token" in printed and "improv." in printed
    assert "Drive at 2 m/s." in printed and "control adaptability" in printed


def test_edge_run_decodes_constrained_by_default_so_every_answer_parses(tiny_onnx, tmp_path, capsys):
    """The default is the decoding the model cards score: grammar-constrained, so even a random
    model's answers parse and apply (with --no-constrained its first answer does not: see
    test_valid_answer_applies_next_step_and_bad_answers_keep_it)."""
    script = tmp_path / "demo.txt"
    script.write_text("0, Drive on the centre line.\n1.5, Drive at 2 m/s.\n")
    out = tmp_path / "run"
    assert edge_run(["--model", str(tiny_onnx), "--track", TRACK, "--script", str(script), "--duration", "3",
                     "--out", str(out), "--fast", "--threads", "1"]) == 0
    capsys.readouterr()
    _, llm, summary = read_log(out)
    assert summary["llm"]["constrained"] is True and summary["llm"]["failure_count"] == 0
    assert [r["status"] for r in llm] == ["applied", "applied"]


def _wrap_generate(monkeypatch, answers: dict[str, str]):
    """Run the real ONNX generation (real token counts and timings) but replace the text for the
    instructions in ``answers`` ("RAISE": raise instead)."""
    real = OnnxGenerator.generate

    def generate(self, prompt, max_new_tokens=None, stop_at_eos=True):
        result = real(self, prompt, max_new_tokens, stop_at_eos)
        for key, text in answers.items():
            if f"Instruction: {key}\n" in prompt:
                if text == "RAISE":
                    raise RuntimeError("simulated runtime failure")
                return GenerationResult(text=text, token_ids=result.token_ids, prompt_tokens=result.prompt_tokens,
                                        emitted_tokens=result.emitted_tokens,
                                        time_to_first_token_s=result.time_to_first_token_s,
                                        decode_times_s=result.decode_times_s, total_s=result.total_s,
                                        stopped_at_eos=result.stopped_at_eos)
        return result

    monkeypatch.setattr(OnnxGenerator, "generate", generate)


def test_valid_answer_applies_next_step_and_bad_answers_keep_it(tiny_onnx, tmp_path, monkeypatch, capsys):
    _wrap_generate(monkeypatch, {"Drive at 2 m/s.": VALID_2MS, "Reverse the car.": "RAISE"})
    script = tmp_path / "s.json"
    script.write_text(json.dumps([{"t": 0, "instruction": "Drive on the centre line."},
                                  {"t": 1.5, "instruction": "Drive at 2 m/s."},
                                  {"t": 4, "instruction": "Drive smoothly."},
                                  {"t": 5, "instruction": "Reverse the car."}]))
    out = tmp_path / "run"
    assert edge_run(["--model", str(tiny_onnx), "--track", TRACK, "--script", str(script), "--duration", "6",
                     "--out", str(out), "--fast", "--threads", "1", "--no-constrained"]) == 0  # garbage must stay garbage
    capsys.readouterr()
    control, llm, summary = read_log(out)
    assert len(control) == 120 and len(llm) == 4
    garbage, good, bad, boom = llm
    assert garbage["status"] == "parse_failure" and garbage["params"] is None
    assert garbage["params_in_use"] == DEFAULT_PARAMS.to_dict()
    # the valid answer applies at the step of its instruction (fast mode waits for it)
    assert good["status"] == "applied" and good["parse_failure"] is None
    k = good["applied_step"]
    assert k == 30 and good["applied_sim_time"] == pytest.approx(1.5) == good["requested_sim_time"]
    assert good["params"]["v_max"] == 2.0 and good["params_in_use"]["v_max"] == 2.0
    assert control[k - 1]["param_age"] == pytest.approx(1.5) and control[k - 1]["param_call"] is None
    assert control[k]["param_age"] == pytest.approx(0.05) and control[k]["param_call"] == 1
    assert control[k + 40]["v"] < 2.2 < control[k - 1]["v"]  # the MPC really follows the new set
    # a bad answer and a worker exception keep the last good set and are counted
    assert bad["status"] == "parse_failure" and bad["params_in_use"]["v_max"] == 2.0
    assert boom["status"] == WORKER_ERROR and "simulated runtime failure" in boom["detail"]
    assert all(r["param_call"] == 1 for r in control[k:])
    ages = [r["param_age"] for r in control[k:]]
    assert ages == sorted(ages)  # never reset after the good answer
    s = summary["llm"]
    assert s["status"]["applied"] == 1 and s["failure_count"] == 3 and s["failures"][WORKER_ERROR] == 1
    assert summary["final_params"]["v_max"] == 2.0 and summary["interrupted"] is False
    w = summary["windows"][1]
    assert w["llm"] == "applied" and w["improvement"] > 0.3  # 2 m/s tracked far better than the default 5 m/s
    assert summary["windows"][3]["llm"] == WORKER_ERROR
    # the model's adaptability: the applied answer scores its improvement, failed answers the worst case
    adapt = summary["adaptability"]
    assert adapt["reference_velocity"] == pytest.approx(w["improvement"])
    assert adapt["smooth"] == adapt["reverse"] == adapt["centreline"] == -4.0 and adapt["windows"] == 4


def test_default_instruction_when_none_given(tiny_onnx, tmp_path, capsys):
    out = tmp_path / "run"
    assert edge_run(["--model", str(tiny_onnx), "--track", TRACK, "--duration", "1", "--out", str(out),
                     "--fast", "--threads", "1"]) == 0
    assert DEFAULT_INSTRUCTION in capsys.readouterr().out
    _, llm, summary = read_log(out)
    assert summary["scenario"] == [{"t": 0.0, "instruction": DEFAULT_INSTRUCTION, "category": "centreline",
                                    "target_speed": None}]
    assert len(llm) == 1 and llm[0]["instruction"] == DEFAULT_INSTRUCTION


# ---------------------------------------------------------------------------------- errors
@pytest.fixture(scope="session")
def broken_models(tiny_onnx, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("broken")
    corrupt = root / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    truncated = root / "truncated.onnx"
    data = tiny_onnx.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    nometa = with_metadata(tiny_onnx, root / "nometa.onnx", lambda p: p.pop("edge_runtime.tokenizer"))

    def no_budget(props):
        generation = json.loads(props["edge_runtime.generation"])
        generation["max_new_tokens"] = {"decision": 12}
        props["edge_runtime.generation"] = json.dumps(generation)

    nobudget = with_metadata(tiny_onnx, root / "nobudget.onnx", no_budget)
    return {"corrupt": corrupt, "truncated": truncated, "nometa": nometa, "nobudget": nobudget,
            "missing": root / "absent.onnx"}


@pytest.mark.parametrize("which,needles", [
    ("corrupt", ["corrupt.onnx", "not a readable ONNX model"]),
    ("truncated", ["truncated.onnx", "not a readable ONNX model"]),
    ("nometa", ["nometa.onnx", "edge_runtime.tokenizer", "missing"]),
    ("nobudget", ["nobudget.onnx", "max_new_tokens.mpc"]),
    ("missing", ["absent.onnx", "not found"]),
])
def test_bad_model_is_one_line_exit_2(which, needles, broken_models, tmp_path, capsys):
    rc = edge_run(["--model", str(broken_models[which]), "--track", TRACK, "--out", str(tmp_path / "x"), "--fast"])
    assert_one_line_error(rc, capsys.readouterr().err, *needles)
    assert not (tmp_path / "x" / "summary.json").exists()


@pytest.mark.parametrize("argv,needles", [
    (["--sim", "carla"], ["CARLA"]),  # fails before the model is even opened
    (["--sim", "warp"], ["unknown simulator 'warp'"]),
    (["--track", "nope"], ["unknown track 'nope'"]),
    (["--instruction", "make me a sandwich"], ["--instruction", "cannot tell the category"]),
    (["--script", "{dir}/nope.txt"], ["nope.txt", "not found"]),
    (["--script", "{dir}/bad.txt"], ["bad.txt:2:", "not after"]),
    (["--params", "default"], ["not allowed with argument"]),
    (["--instruction", "Drive smoothly.", "--script", "{dir}/bad.txt"], ["not allowed with argument"]),
])
def test_bad_run_arguments_are_one_line_exit_2(argv, needles, tmp_path, capsys):
    (tmp_path / "bad.txt").write_text("3, Drive smoothly.\n1, Reverse.\n")
    argv = [a.replace("{dir}", str(tmp_path)) for a in argv]
    rc = edge_run(["--model", str(tmp_path / "never-opened.onnx")] + argv + ["--out", str(tmp_path / "x"), "--fast"])
    assert_one_line_error(rc, capsys.readouterr().err, *needles)


def test_instruction_without_model_is_an_error(tmp_path, capsys):
    rc = edge_run(["--instruction", "Drive smoothly.", "--out", str(tmp_path / "x"), "--fast"])
    assert_one_line_error(rc, capsys.readouterr().err, "need --model")


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "edge_runtime.runtime.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, **kw)


def test_corrupt_model_in_a_subprocess(broken_models, tmp_path):
    proc = _cli("--model", str(broken_models["truncated"]), "--sim", "track", "--out", str(tmp_path / "x"))
    stdout, stderr = proc.communicate(timeout=120)
    assert_one_line_error(proc.returncode, stderr, "truncated.onnx")
    assert stdout == ""


# ------------------------------------------------------------------------------ signals
@pytest.mark.slow
def test_sigterm_mid_run_leaves_valid_log_and_summary(tiny_onnx, tmp_path):
    script = tmp_path / "s.txt"
    script.write_text("".join(f"{t}, {text}\n" for t, text in
                              [(0, "Drive on the centre line."), (0.5, "Drive at 2 m/s."), (1, "Drive smoothly."),
                               (1.5, "Follow the racing line."), (30, "Reverse the car.")]))
    out = tmp_path / "run"
    proc = _cli("--model", str(tiny_onnx), "--script", str(script), "--track", TRACK, "--duration", "60",
                "--threads", "1", "--out", str(out))
    log = out / "steps.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and (not log.exists() or log.read_text().count('"type":"llm"') < 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.03)  # a supervisor's second SIGTERM, then more while the worker stops and windows are scored
    while proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stderr  # interrupted, with the summary written
    control, llm, summary = read_log(out)  # every line parses
    assert summary["interrupted"] is True and 0 < summary["steps"] < 1200
    assert summary["signals"][0] == "SIGTERM" and set(summary["signals"]) == {"SIGTERM"}
    assert len(control) == summary["steps"] and summary["log_records"] == len(control) + len(llm)
    assert summary["llm_blocking"] is False and summary["realtime"] is True
    s = summary["llm"]
    assert s["worker_stopped"] is True
    generated = [r for r in llm if r["type"] == "llm"]
    assert len(generated) == s["generations"] >= 3 and all(r["emitted_tokens"] >= 1 for r in generated)
    assert len(summary["windows"]) >= 3 and summary["windows"][-1]["window"] == control[-1]["window"]
    assert "telemetry:" in stdout


# ----------------------------------------------------------------------------- torch-free
def test_runtime_cli_imports_and_runs_without_torch(tiny_onnx, tmp_path):
    code = ("import sys, edge_runtime.runtime.cli\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
            "from edge_runtime.runtime.cli import main\n"
            f"rc = main(['--model', {str(tiny_onnx)!r}, '--track', 'oval', '--duration', '1', '--fast', "
            f"'--threads', '1', '--out', {str(tmp_path / 'run')!r}])\n"
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "assert rc == 0 and not bad, (rc, bad)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
