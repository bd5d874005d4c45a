import errno
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from edge_runtime.telemetry import JsonlWriter, latency_summary, process_memory, write_json_atomic
from edge_runtime.telemetry import writer as writer_mod


def test_latency_summary_on_known_values():
    values = [100.0] * 5 + [float(i) for i in range(1, 101)]  # warm-up of 5 slow samples
    s = latency_summary(values, warmup=5)
    assert s["count"] == 100 and s["warmup_excluded"] == 5
    assert s["p50"] == pytest.approx(50.5) and s["max"] == 100.0 and s["mean"] == pytest.approx(50.5)
    assert s["p99"] == pytest.approx(99.01)
    empty = latency_summary([1.0], warmup=3)
    assert empty["count"] == 0 and math.isnan(empty["p50"])
    with pytest.raises(ValueError):
        latency_summary([1.0], warmup=-1)


def test_writers_produce_valid_json(tmp_path):
    with JsonlWriter(tmp_path / "log.jsonl") as w:
        for i in range(5):
            w.write({"i": i, "bad": float("nan")})
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["i"] for r in rows] == list(range(5)) and rows[0]["bad"] is None
    write_json_atomic(tmp_path / "s.json", {"x": float("inf"), "nested": {"y": [1.0, float("nan")]}})
    assert json.loads((tmp_path / "s.json").read_text()) == {"x": None, "nested": {"y": [1.0, None]}}
    assert not (tmp_path / "s.json.tmp").exists()


def test_process_memory_is_positive():
    rss, peak = process_memory()
    assert 0 < rss <= peak


# ------------------------------------------------------------------ durability and a failing disk
def test_every_record_reaches_the_os_when_write_returns(tmp_path):
    """A crash of the process (kill -9) after write() returned loses nothing: no user-space buffer."""
    path = tmp_path / "log.jsonl"
    w = JsonlWriter(path)
    for i in range(7):
        assert w.write({"i": i}) is True
        assert [json.loads(x)["i"] for x in path.read_text().splitlines()] == list(range(i + 1))
    w.close()


def test_kill_9_loses_no_written_record(tmp_path):
    path = tmp_path / "log.jsonl"
    code = ("import os, signal, sys\nfrom edge_runtime.telemetry import JsonlWriter\n"
            f"w = JsonlWriter({str(path)!r})\n"
            "for i in range(5):\n    w.write({'i': i})\nos.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [json.loads(x)["i"] for x in path.read_text().splitlines()] == list(range(5))


def test_fsync_runs_at_the_interval_off_the_writing_thread(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(writer_mod.os, "fsync", lambda fd: (calls.append(threading.current_thread().name), real(fd)))
    w = JsonlWriter(tmp_path / "log.jsonl", fsync_interval=0.05)
    w.write({"i": 0})
    deadline = time.time() + 5
    while not calls and time.time() < deadline:
        time.sleep(0.01)
    assert calls and calls[0] == "telemetry-fsync"
    n = len(calls)
    time.sleep(0.2)
    assert len(calls) == n  # nothing new written: no fsync
    w.write({"i": 1})
    w.close()
    assert len(calls) == n + 1  # close fsyncs what is new
    every = JsonlWriter(tmp_path / "every.jsonl", fsync_interval=0)
    calls.clear()
    for i in range(3):
        every.write({"i": i})
    assert len(calls) == 3  # fsync_interval=0: after every record
    every.close()


def _flaky_pwrite(fail_calls: set[int], short: set[int] = frozenset()):
    real = os.pwrite
    n = {"calls": 0}

    def pwrite(fd, data, offset):
        n["calls"] += 1
        if n["calls"] in short:
            return real(fd, data[:7], offset)  # the disk filled up inside this line
        if n["calls"] in fail_calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    return pwrite


def test_disk_errors_never_reach_the_caller_and_leave_whole_lines(tmp_path, monkeypatch):
    # calls 1-3 succeed; 4 is cut short, 5-8 fail (ENOSPC), the disk recovers from call 9 on
    monkeypatch.setattr(writer_mod, "_pwrite", _flaky_pwrite(set(range(5, 9)), short={4}))
    path = tmp_path / "log.jsonl"
    w = JsonlWriter(path, tail=3)
    results = [w.write({"i": i, "pad": "x" * 40}) for i in range(8)]
    # records 0-2 written; 3 cut short (truncated back), then each later write first retries the
    # oldest waiting line (one failing call per write while the disk is full)
    assert results[:3] == [True] * 3 and not any(results[3:])
    assert path.read_text().count("\n") == 3 and path.read_text().endswith("\n")  # no torn bytes left
    assert w.pending == 3 and w.dropped == 2  # the tail keeps the last 3; 2 oldest fell out
    w.write({"i": 8, "pad": "x" * 40})  # disk back: the tail goes first, in order, then the new record
    w.close()
    rows = [json.loads(x)["i"] for x in path.read_text().splitlines()]
    assert rows == [0, 1, 2, 5, 6, 7, 8]
    h = w.health()
    assert h["records"] == 7 and h["dropped"] == 2 and h["pending"] == 0
    assert h["write_errors"] >= 2 and h["first_error"].startswith("ENOSPC") and "cut short" in h["first_error"]


def test_records_still_waiting_at_close_are_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod, "_pwrite", _flaky_pwrite(set(range(3, 1000))))
    w = JsonlWriter(tmp_path / "log.jsonl", tail=4)
    for i in range(10):
        w.write({"i": i})
    w.close()
    assert w.records == 2 and w.dropped == 8 and w.pending == 0
    assert [json.loads(x)["i"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [0, 1]
    with pytest.raises(ValueError, match="closed"):
        w.write({"i": 99})


def test_summary_write_failure_leaves_no_tmp(tmp_path, monkeypatch):
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer_mod.os, "replace", full)
    with pytest.raises(OSError):
        write_json_atomic(tmp_path / "s.json", {"x": 1})
    monkeypatch.setattr(writer_mod.os, "replace", real_replace)
    assert list(tmp_path.iterdir()) == []
