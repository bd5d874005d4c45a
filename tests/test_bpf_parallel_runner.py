"""bench/reproduce_bpf_parallel.py (the GPU job's runner) and bench/weights_transport.py (the way its model
comes back): dependency order, failure propagation, the deadline, resuming, the plan's runs matching
bench/reproduce_bpf.py's, and a transported model that loads and matches its source."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

runner = importlib.import_module("reproduce_bpf_parallel")
PY = sys.executable


def node(tmp: Path, name: str, code: str, deps=(), priority=(0,), tmp_json=False):
    done = tmp / f"{name}.done"
    target = tmp / f"{name}.partial" if tmp_json else done
    cmd = [PY, "-c", f"import pathlib, time; {code}; pathlib.Path({str(target)!r}).write_text('x')"]
    return runner.Node(name, cmd, done, list(deps), priority, tmp / "logs" / f"{name}.log",
                       target if tmp_json else None)


def run(nodes, **kw):
    kw = {"max_parallel": 4, "last_start_s": float("inf"), "deadline_s": 60, "env": dict(os.environ),
          "poll_s": 0.05, "log": lambda m: None, **kw}
    runner.run_graph(nodes, **kw)
    return {n.name: n.state for n in nodes}


def test_dependencies_run_first_and_failures_stop_what_depends_on_them(tmp_path):
    order = tmp_path / "order.txt"
    log = f"open({str(order)!r}, 'a').write"
    nodes = [node(tmp_path, "a", f"{log}('a')"), node(tmp_path, "b", f"{log}('b')", deps=["a"]),
             node(tmp_path, "bad", "raise SystemExit(3)"), node(tmp_path, "after-bad", "pass", deps=["bad"]),
             node(tmp_path, "ev", f"{log}('e')", deps=["b"], tmp_json=True)]
    states = run(nodes)
    assert states == {"a": "done", "b": "done", "bad": "failed", "after-bad": "not started", "ev": "done"}
    assert order.read_text() == "abe"
    assert (tmp_path / "ev.done").exists() and not (tmp_path / "ev.partial").exists()  # renamed on success
    assert nodes[2].rc == 3


def test_the_deadline_stops_running_processes_and_nothing_starts_late(tmp_path):
    nodes = [node(tmp_path, "slow", "time.sleep(30)"), node(tmp_path, "next", "pass", deps=["slow"])]
    started = time.time()
    states = run(nodes, deadline_s=1.0)
    assert time.time() - started < 15
    assert states == {"slow": "stopped", "next": "not started"}
    assert not (tmp_path / "slow.done").exists()


def test_training_does_not_start_after_last_start_but_evaluations_do(tmp_path):
    nodes = [node(tmp_path, "first", "time.sleep(0.5)"), node(tmp_path, "train", "pass", deps=["first"]),
             node(tmp_path, "eval", "pass", deps=["first"], tmp_json=True)]
    assert run(nodes, last_start_s=0.2, deadline_s=20) == {"first": "done", "train": "not started", "eval": "done"}


def test_finished_outputs_are_reused(tmp_path):
    (tmp_path / "a.done").write_text("old")
    nodes = [node(tmp_path, "a", "raise SystemExit(1)"), node(tmp_path, "b", "pass", deps=["a"])]
    assert run(nodes) == {"a": "done", "b": "done"}
    assert (tmp_path / "a.done").read_text() == "old"


def test_unknown_dependency_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown node"):
        run([node(tmp_path, "a", "pass", deps=["ghost"])])


def test_plan_holds_every_method_seed_and_evaluation(tmp_path, capsys):
    base = Path(__file__).resolve().parents[1] / "models" / "tiny" / "dense"
    assert runner.main(["--base", str(base), "--out", str(tmp_path), "--dry-run"]) == 0
    names = [line.split(" <- ")[0].split(") ")[1] for line in capsys.readouterr().out.splitlines()
             if line.startswith("(")]
    trained = {n for n in names if not n.startswith("eval-")}
    for method in ("bpf-rl", "bpf-sft-rl", "sft-prune", "ptp", "ptp-rl"):
        assert {f"{method}-50-s0", f"{method}-50-s1", f"{method}-25-s0"} <= trained
        assert f"{method}-25-s1" not in trained  # the second seed only at the main ratio (--extra-seed-ratios)
    assert {"dense-sft1", "dense-sft", "small-dense-base", "small-dense-sft", "dense-s0", "dense-s1",
            "small-dense-s0", "small-dense-s1"} <= trained
    assert "eval-bpf-sft-rl-50-s0-validation" in names and "eval-bpf-sft-rl-25-s0-test" in names
    assert "eval-bpf-sft-rl-25-s0-validation" not in names  # the selection split only where a model is chosen
    # the runs are reproduce_bpf's commands: same directory, same flags
    import reproduce_bpf as rb

    nodes = {n.name: n for n in runner.plan(runner.main.__globals__["argparse"].Namespace(
        base=str(base), out=str(tmp_path), device="cpu", ratios=[0.5, 0.25], seeds=[0, 1], extra_seed_ratios=[50],
        sft_steps=7, rl_steps=5, shares=4, dense_steps=None, report_split="test", select_split="validation",
        workers=1, threads=1, eval_batch_size=8, extra=[]))}
    args = runner.main.__globals__["argparse"].Namespace(shares=4, sft_steps=7, rl_steps=5, workers=1, threads=1,
                                                         extra=["--device", "cpu"])
    out, cmd = rb.bpf_command("bpf-sft-rl-50", "sft-rl", tmp_path / "models" / "dense-sft", 0.5, 1, args, tmp_path,
                              tmp_path / "models" / "dense-sft" / "arch_spec.json")
    assert nodes["bpf-sft-rl-50-s1"].cmd == cmd and nodes["bpf-sft-rl-50-s1"].done == out / "train_summary.json"


def test_transported_weights_load_and_match_the_source(tmp_path):
    torch = pytest.importorskip("torch")
    from edge_runtime.model.build import build_model, preset_spec
    from edge_runtime.model.io import load_model, save_model

    transport = importlib.import_module("weights_transport")
    src = tmp_path / "src"
    model = build_model(preset_spec("llama-4m", vocab_size=64, num_layers=3), seed=0)
    save_model(model, src, metadata={"training": {"seed": 0}})
    (src / "train_summary.json").write_text('{"kind": "bpf"}\n')
    manifest = transport.pack(src, tmp_path / "parts", part_mib=0.5)
    assert len(manifest["parts"]) > 1  # split, the embedding by rows
    assert all((tmp_path / "parts" / p).stat().st_size <= 0.5 * 2**20 + 4096 for p in manifest["parts"])
    out = transport.unpack(tmp_path / "parts", tmp_path / "back")
    back, _ = load_model(out)
    ids = torch.randint(0, 64, (2, 7))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits.log_softmax(-1), back(input_ids=ids).logits.log_softmax(-1)
    assert (a.exp() * (a - b)).sum(-1).mean() < 1e-3
    meta = json.loads((out / "edge_runtime_meta.json").read_text())["metadata"]
    assert meta["training"] == {"seed": 0} and meta["transport"]["source_weights_sha256"] == manifest[
        "source_weights_sha256"]
    assert (out / "train_summary.json").read_text() == '{"kind": "bpf"}\n'


def test_a_corrupt_part_is_refused_with_one_line(tmp_path, capsys):
    pytest.importorskip("torch")
    from edge_runtime.model.build import build_model, preset_spec
    from edge_runtime.model.io import save_model

    transport = importlib.import_module("weights_transport")
    save_model(build_model(preset_spec("llama-4m", vocab_size=64, num_layers=2), seed=0), tmp_path / "src")
    manifest = transport.pack(tmp_path / "src", tmp_path / "parts")
    part = tmp_path / "parts" / next(iter(manifest["parts"]))
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF
    part.write_bytes(bytes(data))
    assert transport.main(["unpack", str(tmp_path / "parts"), str(tmp_path / "back")]) == 2
    err = capsys.readouterr().err.strip()
    assert "sha256 differs" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "back").exists()


def _fake_eval(path: Path, adapt: float, decision: float, params: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"parameters": params, "mpc": {"adaptability": {"overall": adapt}},
                                "decision": {"accuracy": decision}}))


def test_the_shipped_model_is_chosen_on_validation_only(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_finish", BENCH / "gpu" / "finish.py")
    finish = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(finish)
    root = tmp_path / "bpf"
    for name in ("dense-s0", "dense-s1", "bpf-rl-50-s0", "sft-prune-50-s0", "sft-prune-25-s0", "ptp-50-s0"):
        (root / "models" / name).mkdir(parents=True)
        (root / "models" / name / "train_summary.json").write_text("{}")
    _fake_eval(root / "eval" / "dense-s0-validation-hairpin.json", 0.6, 0.9)
    _fake_eval(root / "eval" / "dense-s1-validation-hairpin.json", 0.4, 0.9)
    _fake_eval(root / "eval" / "bpf-rl-50-s0-validation-hairpin.json", 0.45, 0.81)   # 0.9, 0.9 -> 0.90
    _fake_eval(root / "eval" / "sft-prune-50-s0-validation-hairpin.json", 0.55, 0.72)  # 1.1, 0.8 -> 0.95
    _fake_eval(root / "eval" / "sft-prune-50-s0-test-esses.json", -9, 0)  # test is never read
    _fake_eval(root / "eval" / "sft-prune-25-s0-validation-hairpin.json", 0.9, 0.99)  # another ratio
    _fake_eval(root / "eval" / "ptp-50-s0-test-esses.json", 0.9, 0.99)  # no validation report: not a candidate
    sel = finish.select(root, 50)
    assert sel["dense"]["adaptability"] == pytest.approx(0.5)
    assert [c["model"] for c in sel["candidates"]] == ["sft-prune-50-s0", "bpf-rl-50-s0"]
    assert sel["chosen"] == "sft-prune-50-s0" and sel["candidates"][0]["score"] == pytest.approx(0.95)
    empty = tmp_path / "none"
    (empty / "models" / "bpf-rl-50-s0").mkdir(parents=True)
    (empty / "models" / "bpf-rl-50-s0" / "train_summary.json").write_text("{}")
    assert finish.select(empty, 50)["chosen"] is None  # no dense reference finished: nothing chosen


def test_the_budget_is_the_largest_that_fits_the_deadline(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_pick_budget", BENCH / "gpu" / "pick_budget.py")
    pick = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pick)
    t = {"rollout_s": 0.2, "eval_wall_s": 30, "sft_step_s": 0.05, "rl_generation_s": 1.0, "rl_update_s": 0.1,
         "process_overhead_s": 15}
    # by hand for 40 GRPO steps: dense SFT 2*15 + 800*0.05 = 70; a run 15 + 200*0.05 + 40*(1.1 + 18*0.2/2) = 141
    assert pick.critical_path_s(t, 40, 2) == pytest.approx(70 + 2 * 141 + 30)
    timing = tmp_path / "timing.json"
    timing.write_text(json.dumps(t))
    # 50 steps: 70 + 2 * (15 + 250 * 0.05 + 50 * 2.9) + 30 = 445 s, x 1.5 = 667.5 <= 700; 60 steps: 762 > 700
    assert pick.main([str(timing), "--deadline-s", "700", "--parallel-slowdown", "1.5"]) == 0
    assert capsys.readouterr().out.split() == ["250", "50"]
    assert pick.main([str(timing), "--deadline-s", "10", "--parallel-slowdown", "1.5"]) == 0  # nothing fits:
    assert capsys.readouterr().out.split() == ["100", "20"]                                    # the smallest
