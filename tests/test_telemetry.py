import json
import math

import pytest

from edge_runtime.telemetry import JsonlWriter, latency_summary, process_memory, write_json_atomic


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
    with JsonlWriter(tmp_path / "log.jsonl", flush_every=2) as w:
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
