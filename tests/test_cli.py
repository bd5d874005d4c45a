import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edge_runtime.runtime.cli import main as edge_run
from edge_runtime.tasks.cli import main as edge_task


def test_edge_task_eval_writes_json(tmp_path, capsys):
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"qn": 60, "v_max": 3.0}))
    out = tmp_path / "r.json"
    rc = edge_task(["eval", "--instruction", "drive on the centre line", "--params", str(params),
                    "--track", "hairpin", "--duration", "6", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["result"]["category"] == "centreline"
    assert report["result"]["adaptability"] > 0  # slower and tighter than the default: closer to the line
    assert "adaptability" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--params", "{bad}"], "parameter file not found"),
    (["--track", "nope"], "unknown track 'nope'"),
    (["--instruction", "make me a sandwich"], "cannot tell the category"),
])
def test_edge_task_errors_are_one_line(args, message, capsys):
    base = {"--instruction": "drive at 2 m/s", "--params": "default", "--track": "oval"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["eval"] + [x for kv in base.items() for x in kv]
    assert edge_task(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_edge_run_writes_log_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert edge_run(["--sim", "track", "--track", "hairpin", "--duration", "4", "--out", str(out), "--fast"]) == 0
    lines = (out / "steps.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 80 and [r["step"] for r in records] == list(range(80))
    assert all(r["exec_time"] > 0 and r["mpc_ok"] for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 80 and summary["exec_time"]["warmup_excluded"] == 20
    assert summary["exec_time"]["count"] == 60 and summary["crashed"] is False
    assert summary["peak_rss"] >= summary["rss"] > 0
    assert "p99" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--sim", "carla"], "CARLA"),
    (["--sim", "warp"], "unknown simulator 'warp'"),
    (["--track", "nope"], "unknown track"),
    (["--rate", "0"], "rate_hz"),
])
def test_edge_run_errors_are_one_line(argv, message, tmp_path, capsys):
    assert edge_run(argv + ["--out", str(tmp_path / "x"), "--fast"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_edge_run_sigterm_leaves_valid_log_and_summary(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.runtime.cli", "--duration", "60", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log = out / "steps.jsonl"
    deadline = time.time() + 30
    while time.time() < deadline and (not log.exists() or log.stat().st_size < 2000):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr.decode()  # interrupted runs have their own exit status
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and 0 < summary["steps"] < 1200 and summary["signals"] == ["SIGTERM"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == summary["steps"] == summary["log_records"]
