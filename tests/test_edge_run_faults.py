"""edge-run under faults: a full or failing disk, bad output paths, two runs into one --out, signals.

The full-disk cases run twice: on a real small tmpfs (where ``mount`` is permitted: root in a
container or VM) and with an injected writer error (everywhere). Signal cases send real signals to
an ``edge-run`` subprocess.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_runtime.runtime import cli as run_cli
from edge_runtime.runtime.cli import EXIT_TELEMETRY_LOST, main as edge_run
from edge_runtime.runtime.output_dir import claim_output_dir
from edge_runtime.runtime.signals import EXIT_INTERRUPTED
from edge_runtime.telemetry import writer as writer_mod

REPO = Path(__file__).resolve().parents[1]
FAST = ["--track", "oval", "--fast", "--gpu-interval", "0"]


def lines_of(path: Path) -> list[dict]:
    text = path.read_text()
    assert text == "" or text.endswith("\n"), "torn last line"
    return [json.loads(line) for line in text.splitlines()]


def one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("edge-run: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def _mount_tmpfs(where: Path, options: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({proc.stderr.strip() or proc.returncode})")


@pytest.fixture
def tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs mount point, unmounted after the test."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        _mount_tmpfs(where, options)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# ------------------------------------------------------------------------------ full disk
def test_full_disk_never_stops_the_loop(tmpfs, capsys):
    disk = tmpfs("size=64k")
    (disk / "filler").write_bytes(b"\0" * 40 * 1024)
    out = disk / "run"
    rc = edge_run(FAST + ["--duration", "5", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == EXIT_TELEMETRY_LOST, err
    assert "Traceback" not in err and "No space left" in err
    summary = json.loads(err.strip().splitlines()[-1])  # summary.json did not fit either: stderr, one line
    assert summary["steps"] == 100 and summary["crashed"] is False  # the car drove to the end
    records = lines_of(out / "steps.jsonl")  # every line that reached the disk parses; no torn last line
    t = summary["telemetry"]
    assert t["dropped"] > 0 and t["first_error"].startswith("ENOSPC")
    assert len(records) == t["records"] == summary["log_records"] and t["records"] + t["dropped"] == 100
    assert [r["step"] for r in records] == list(range(len(records)))
    assert not (out / "summary.json").exists() and not (out / "summary.json.tmp").exists()


def _failing_pwrite(fail_from: int, short: bool = False):
    """A pwrite that fails (ENOSPC) from its ``fail_from``-th call on; ``short``: the first failing
    call writes half the line and returns the short count, as a filling disk does."""
    real = os.pwrite
    calls = {"n": 0}

    def pwrite(fd, data, offset):
        calls["n"] += 1
        if calls["n"] <= fail_from:
            return real(fd, data, offset)
        if short and calls["n"] == fail_from + 1:
            return real(fd, data[: len(data) // 2], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    return pwrite


@pytest.mark.parametrize("short", [False, True])
def test_injected_writer_error_never_stops_the_loop(short, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(writer_mod, "_pwrite", _failing_pwrite(30, short))
    out = tmp_path / "run"
    rc = edge_run(FAST + ["--duration", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == EXIT_TELEMETRY_LOST, err
    assert "Traceback" not in err and "50 telemetry records could not be written" in err
    summary = json.loads((out / "summary.json").read_text())  # the summary still fits: written in --out
    assert summary["steps"] == 80 and summary["log_records"] == 30
    t = summary["telemetry"]
    assert t["records"] == 30 and t["dropped"] == 50 and t["first_error"].startswith("ENOSPC")
    records = lines_of(out / "steps.jsonl")
    assert [r["step"] for r in records] == list(range(30))


# ----------------------------------------------------------------------- output-path errors
@pytest.mark.parametrize("case,needles", [
    ("file", ["is a file, not a directory"]),
    ("under-file", ["is a file, so no directory can be made"]),
    ("summary-dir", ["summary.json is a directory"]),
    ("log-dir", ["steps.jsonl is a directory"]),
])
def test_output_path_errors_are_one_line_before_the_model_loads(case, needles, tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    out = {"file": blocker, "under-file": blocker / "run", "summary-dir": tmp_path / "a",
           "log-dir": tmp_path / "b"}[case]
    if case.endswith("-dir"):
        (out / ("summary.json" if case == "summary-dir" else "steps.jsonl")).mkdir(parents=True)
    # the model path does not exist: an error about it would mean the model was opened first
    rc = edge_run(["--model", str(tmp_path / "never-opened.onnx"), "--out", str(out)] + FAST)
    one_line_error(rc, capsys.readouterr().err, f"--out {out}", *needles)
    assert blocker.read_text() == "not a directory"


def test_read_only_output_is_one_line(tmpfs, capsys):
    ro = tmpfs("size=64k,ro")
    for out, needle in ((ro / "run", "cannot create the directory (Read-only file system)"),
                        (ro, "not writable")):
        rc = edge_run(["--model", "never-opened.onnx", "--out", str(out)] + FAST)
        one_line_error(rc, capsys.readouterr().err, f"--out {out}", needle)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway")
def test_unwritable_output_is_one_line(tmp_path, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o555)
    try:
        rc = edge_run(["--model", "never-opened.onnx", "--out", str(out)] + FAST)
    finally:
        out.chmod(0o755)
    one_line_error(rc, capsys.readouterr().err, f"--out {out}", "not writable")


def test_failed_summary_write_leaves_no_tmp(tmp_path):
    target = tmp_path / "summary.json"
    target.mkdir()  # os.replace onto a directory fails after the temporary file was written
    with pytest.raises(OSError):
        writer_mod.write_json_atomic(target, {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


# --------------------------------------------------------------------- one run per --out
def test_out_in_use_by_another_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    held = claim_output_dir(out)  # what a running edge-run holds
    try:
        rc = edge_run(FAST + ["--duration", "1", "--out", str(out)])
    finally:
        held.release()
    one_line_error(rc, capsys.readouterr().err, f"--out {out}", "another edge-run is writing there",
                   f"(pid {os.getpid()})")
    assert not (out / "steps.jsonl").exists()
    assert edge_run(FAST + ["--duration", "1", "--out", str(out)]) == 0  # free again once released


def test_earlier_run_is_refused_unless_overwrite(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert edge_run(FAST + ["--duration", "1", "--out", str(out)]) == 0
    first = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    rc = edge_run(FAST + ["--duration", "2", "--out", str(out)])
    one_line_error(rc, capsys.readouterr().err, f"--out {out}", "holds an earlier run", "--overwrite")
    assert json.loads((out / "summary.json").read_text()) == first and len(lines_of(out / "steps.jsonl")) == 20

    real_writer = run_cli.JsonlWriter
    seen = {}

    def writer(path, *a, **kw):  # the old files are gone before the new run writes anything
        seen["old files"] = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        return real_writer(path, *a, **kw)

    monkeypatch.setattr(run_cli, "JsonlWriter", writer)
    assert edge_run(FAST + ["--duration", "2", "--out", str(out), "--overwrite"]) == 0
    assert seen["old files"] == []
    second = json.loads((out / "summary.json").read_text())
    assert second["steps"] == 40 and second["started"] > first["started"]
    assert [r["step"] for r in lines_of(out / "steps.jsonl")] == list(range(40))


def _cli(*args: str, code: str | None = None) -> subprocess.Popen:
    """edge-run in a subprocess; ``code``: Python run first in that process (e.g. a slow start-up)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    runner = (f"import sys\n{code or ''}\nfrom edge_runtime.runtime.cli import main\n"
              f"sys.argv = ['edge-run', *{list(args)!r}]\nsys.exit(main())\n")  # main(): as the command line
    return subprocess.Popen([sys.executable, "-c", runner], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)


def _wait_for_lines(log: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    pytest.fail(f"{log} never reached {n} lines (exit {proc.poll()})")


@pytest.mark.slow
def test_two_concurrent_runs_into_one_out(tmp_path):
    out = tmp_path / "run"
    first = _cli("--track", "oval", "--duration", "60", "--gpu-interval", "0", "--out", str(out))
    try:
        _wait_for_lines(out / "steps.jsonl", 10, first)
        second = _cli("--track", "oval", "--duration", "1", "--gpu-interval", "0", "--out", str(out))
        _, err = second.communicate(timeout=60)
        one_line_error(second.returncode, err, "another edge-run is writing there", f"(pid {first.pid})")
        assert first.poll() is None  # the first run was not disturbed
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=60)
    finally:
        first.kill()
    assert first.returncode == EXIT_INTERRUPTED, err
    summary = json.loads((out / "summary.json").read_text())
    records = lines_of(out / "steps.jsonl")
    assert [r["step"] for r in records] == list(range(summary["steps"])) == list(range(summary["log_records"]))


# ---------------------------------------------------------------------------------- signals
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_signal_mid_run_writes_the_summary_and_exits_130(sig, tmp_path):
    out = tmp_path / "run"
    proc = _cli("--track", "oval", "--duration", "60", "--gpu-interval", "0", "--out", str(out))
    _wait_for_lines(out / "steps.jsonl", 10, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert "Traceback" not in stderr and f"stopped by {sig.name}" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signals"] == [sig.name]
    records = lines_of(out / "steps.jsonl")
    assert 10 <= len(records) == summary["steps"] == summary["log_records"] < 1200
    assert "telemetry:" in stdout


@pytest.mark.slow
def test_signal_burst_while_stopping_keeps_the_summary(tmp_path):
    """A second SIGTERM ~30 ms after the first, then more every 5 ms until the process is gone:
    none of them may cut the summary short."""
    out = tmp_path / "run"
    proc = _cli("--track", "oval", "--duration", "60", "--gpu-interval", "0", "--out", str(out))
    _wait_for_lines(out / "steps.jsonl", 10, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.03)
    sent = 1
    deadline = time.time() + 10
    while proc.poll() is None and time.time() < deadline:
        proc.send_signal(signal.SIGTERM)
        sent += 1
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=60)
    assert sent >= 2 and proc.returncode == EXIT_INTERRUPTED, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["signals"][0] == "SIGTERM"
    assert len(lines_of(out / "steps.jsonl")) == summary["steps"]


SLOW_START = {  # what start-up is doing when the signal arrives: slowed down so the signal lands there
    "model load": ("import time, edge_runtime.runtime.cli as c\n"
                   "def slow(args):\n    print('loading', flush=True); time.sleep(60)\n"
                   "c._load_model = slow\n"),
    "simulator": ("import time, edge_runtime.runtime.cli as c\n"
                  "def slow(*a, **kw):\n    print('loading', flush=True); time.sleep(60)\n"
                  "c.make_simulator = slow\n"),
}


@pytest.mark.slow
@pytest.mark.parametrize("phase,sig", [("model load", signal.SIGINT), ("model load", signal.SIGTERM),
                                       ("simulator", signal.SIGINT), ("simulator", signal.SIGHUP)])
def test_signal_during_start_up_is_one_line(phase, sig, tmp_path):
    out = tmp_path / "run"
    proc = _cli("--model", str(tmp_path / "m.onnx"), "--track", "oval", "--out", str(out), code=SLOW_START[phase])
    assert proc.stdout.readline() == "loading\n"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert stderr == f"edge-run: interrupted by {sig.name} while starting; nothing was run\n"
    assert not (out / "summary.json").exists() and not (out / "steps.jsonl").exists()
