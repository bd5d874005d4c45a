"""edge-report on runs recorded by edge-run: complete, interrupted (no summary, cut mid-file),
torn last line, crashed, LLM failures; the files exist, the pictures are not blank, the page
holds everything itself, bad input is one line with exit 2, and edge-run --report writes it."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("matplotlib")  # the report extra (also in dev)

from matplotlib.image import imread

from edge_runtime.report.cli import FILES, PAGE
from edge_runtime.report.cli import main as edge_report
from edge_runtime.report.runlog import load_run
from edge_runtime.runtime.cli import main as edge_run

REPO = Path(__file__).resolve().parents[1]
SCRIPT = "0, Drive on the centre line.\n1.5, Drive smoothly.\n2.5, Reverse the car.\n"
EXTERNAL = re.compile(r"https?://|src=[\"']//|href=[\"']//|@import|url\(", re.I)


def _model() -> Path:
    for rel in ("models/tiny/dense.onnx", "models/dense.onnx"):
        if (REPO / rel).is_file():
            return REPO / rel
    pytest.skip("no shipped ONNX model in models/")


def _record(out: Path, script_dir: Path, *extra: str, model: bool = True) -> Path:
    argv = ["--track", "hairpin", "--duration", "3.5", "--out", str(out), "--fast", *extra]
    if model:
        script = script_dir / "script.txt"
        script.write_text(SCRIPT)
        argv = ["--model", str(_model()), "--script", str(script), "--threads", "1", *argv]
    assert edge_run(argv) == 0
    return out


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("complete")
    return _record(root / "run", root)


@pytest.fixture(scope="module")
def failing_llm_run(tmp_path_factory) -> Path:
    """The real model, but its answer to one instruction is garbage and the other raises."""
    from edge_runtime.decoding.generator import OnnxGenerator
    from edge_runtime.decoding.step_api import GenerationResult

    real = OnnxGenerator.generate

    def generate(self, prompt, max_new_tokens=None, stop_at_eos=True):
        result = real(self, prompt, max_new_tokens, stop_at_eos)
        if "Instruction: Reverse the car.\n" in prompt:
            raise RuntimeError("simulated runtime failure")
        if "Instruction: Drive smoothly.\n" in prompt:
            return GenerationResult(text="no answer here", token_ids=result.token_ids,
                                    prompt_tokens=result.prompt_tokens, emitted_tokens=result.emitted_tokens,
                                    time_to_first_token_s=result.time_to_first_token_s,
                                    decode_times_s=result.decode_times_s, total_s=result.total_s,
                                    stopped_at_eos=result.stopped_at_eos)
        return result

    root = tmp_path_factory.mktemp("failing")
    mp = pytest.MonkeyPatch()
    mp.setattr(OnnxGenerator, "generate", generate)
    try:
        return _record(root / "run", root)
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory) -> Path:
    """No LLM; a parameter set far too fast for the hairpin: the car hits the wall."""
    root = tmp_path_factory.mktemp("crashed")
    params = root / "fast.json"
    params.write_text(json.dumps({"v_min": 5, "v_max": 10, "alat_max": 20, "a_max": 20, "track_safety_margin": 0,
                                  "qn": 0, "qalpha": 0}))
    out = _record(root / "run", root, "--params", str(params), model=False)
    assert json.loads((out / "summary.json").read_text())["crashed"] is True
    return out


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("report", ".lock"))
    return dst


def _report(run: Path, out: Path, *extra: str, capsys=None) -> str:
    assert edge_report([str(run), "-o", str(out), *extra]) == 0
    for name, _ in FILES:
        png = out / name
        assert png.stat().st_size > 10_000
        pixels = imread(png)
        assert pixels.ndim == 3 and pixels.shape[0] > 300 and float(pixels[..., :3].std()) > 0.02  # not blank
    page = (out / PAGE).read_text(encoding="utf-8")
    assert not EXTERNAL.search(page), EXTERNAL.search(page).group(0)
    uris = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == len(FILES)
    for uri, (name, _) in zip(uris, FILES):
        assert base64.b64decode(uri) == (out / name).read_bytes()  # the page holds the very pictures
    return page


def _windows_table(page: str) -> str:
    return page.split("<h2>Instruction windows</h2>")[1].split("</table>")[0]


def test_complete_run(complete_run, tmp_path):
    page = _report(complete_run, tmp_path / "r")
    assert "complete" in page and "track</td><td>hairpin" in page
    table = _windows_table(page)
    for text in ("Drive on the centre line.", "Drive smoothly.", "Reverse the car.", "centreline", "smooth",
                 "reverse"):
        assert text in table
    summary = json.loads((complete_run / "summary.json").read_text())
    applied = [w for w in summary["windows"] if w["llm"] == "applied"]
    assert applied and table.count(" s</td>") == len(applied)  # "applied at" filled where an answer applied
    assert "%" in table  # the improvement over the defaults, from summary.json
    assert "MPC parameter sets in force" in page and "LLM time to first token" in page
    assert "no summary.json" not in page and "torn" not in page


def test_default_output_directory(complete_run, tmp_path):
    run = _copy(complete_run, tmp_path / "run")
    assert edge_report([str(run)]) == 0
    assert sorted(p.name for p in (run / "report").iterdir()) == sorted([PAGE, *(n for n, _ in FILES)])


def test_interrupted_run_cut_mid_file_without_summary(complete_run, tmp_path):
    run = _copy(complete_run, tmp_path / "run")
    (run / "summary.json").unlink()
    log = run / "steps.jsonl"
    data = log.read_bytes()
    cut = data[: len(data) * 6 // 10]
    assert not cut.endswith(b"\n")  # cut inside a record, as a power loss does
    log.write_bytes(cut)
    loaded = load_run(run)
    assert loaded.summary is None and loaded.torn_last_line and loaded.bad_lines == 0
    assert len(loaded.control) == cut.count(b'"type":"control"') - (cut.rsplit(b"\n", 1)[1].count(b'"control"'))
    page = _report(run, tmp_path / "r", "--track", "hairpin")
    assert "no summary.json" in page and "torn" in page and "incomplete" in page
    assert "Drive on the centre line." in _windows_table(page)  # rebuilt from the LLM records
    # without the summary and without --track the path is drawn in track coordinates, and says so
    page = _report(run, tmp_path / "r2")
    assert "pass --track" in page


def test_torn_last_line(complete_run, tmp_path):
    run = _copy(complete_run, tmp_path / "run")
    whole = load_run(run)
    with open(run / "steps.jsonl", "ab") as f:
        f.write(b'{"type":"control","step":9999,"sim_time":99.0,"exe')
    loaded = load_run(run)
    assert loaded.torn_last_line and len(loaded.control) == len(whole.control)
    page = _report(run, tmp_path / "r")
    assert "torn" in page and "99.0" not in page


def test_corrupt_line_in_the_middle_is_skipped_and_counted(complete_run, tmp_path):
    run = _copy(complete_run, tmp_path / "run")
    lines = (run / "steps.jsonl").read_bytes().split(b"\n")
    lines[10] = b"\xff\xfe not json"
    (run / "steps.jsonl").write_bytes(b"\n".join(lines))
    loaded = load_run(run)
    assert loaded.bad_lines == 1 and not loaded.torn_last_line
    assert "1 line(s) of steps.jsonl were not JSON records" in _report(run, tmp_path / "r")


def test_crashed_run(crashed_run, tmp_path):
    page = _report(crashed_run, tmp_path / "r")
    crash_t = load_run(crashed_run).crash["sim_time"]
    assert f"yes, at t = {crash_t:.2f} s" in page
    assert "model</td><td>none (fixed parameters)" in page
    assert "<h2>Instruction windows</h2>" not in page  # no LLM: no windows


def test_run_with_llm_failures(failing_llm_run, tmp_path):
    summary = json.loads((failing_llm_run / "summary.json").read_text())
    assert summary["llm"]["failures"].get("worker_error") == 1 and summary["llm"]["failure_count"] >= 2
    table = _windows_table(_report(failing_llm_run, tmp_path / "r"))
    assert "worker_error" in table and "simulated runtime failure" in table
    assert "parse_failure" in table


def _one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edge-report: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_bad_input_is_one_line_exit_2(complete_run, tmp_path, capsys):
    assert edge_report([str(tmp_path / "missing")]) == 2
    _one_line_error(capsys, "missing", "no such directory")
    (tmp_path / "empty").mkdir()
    assert edge_report([str(tmp_path / "empty")]) == 2
    _one_line_error(capsys, "no steps.jsonl")
    (tmp_path / "file").write_text("x")
    assert edge_report([str(tmp_path / "file")]) == 2
    _one_line_error(capsys, "is a file")
    (tmp_path / "nosteps").mkdir()
    (tmp_path / "nosteps" / "steps.jsonl").write_text('{"type": "llm", "call": 0}\n')
    assert edge_report([str(tmp_path / "nosteps")]) == 2
    _one_line_error(capsys, "no control step")
    (tmp_path / "dirlog").mkdir()
    (tmp_path / "dirlog" / "steps.jsonl").mkdir()
    assert edge_report([str(tmp_path / "dirlog")]) == 2
    _one_line_error(capsys, "is a directory")
    assert edge_report([str(complete_run), "-o", str(tmp_path / "o"), "--track", "nowhere"]) == 2
    _one_line_error(capsys, "--track", "nowhere")
    assert edge_report([str(complete_run), "-o", str(tmp_path / "file" / "sub")]) == 2
    _one_line_error(capsys, "cannot write the report")
    assert edge_report([]) == 2
    _one_line_error(capsys, "RUN_DIR")


def test_edge_run_report_flag(tmp_path, capsys):
    out = tmp_path / "run"
    assert edge_run(["--params", "default", "--duration", "1.5", "--out", str(out), "--fast", "--report"]) == 0
    assert (out / "report" / PAGE).is_file() and (out / "report" / "timing.png").is_file()


def test_edge_run_report_without_matplotlib_keeps_the_run(tmp_path, monkeypatch, capfd):
    """The child process finds no matplotlib: one line from edge-report, a warning, exit 0 still."""
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("No module named matplotlib (test)")\n')
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "run"
    assert edge_run(["--params", "default", "--duration", "1", "--out", str(out), "--fast", "--report"]) == 0
    err = capfd.readouterr().err
    assert "edge-report: error: matplotlib is not installed" in err and 'pip install -e ".[report]"' in err
    assert "--report: no report written" in err and "Traceback" not in err
    assert (out / "summary.json").is_file() and not (out / "report" / PAGE).exists()


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (Debian: apt-get install chromium)")
def test_page_in_a_headless_browser(complete_run, tmp_path):
    """The page as a browser shows it: no console message, every image decodes (naturalWidth > 0,
    written into the title by a snippet injected into a copy of the page), and a screenshot."""
    _report(complete_run, tmp_path / "r")
    page = (tmp_path / "r" / PAGE).read_text(encoding="utf-8")
    probe = ("<script>window.onload=function(){var i=document.images,ok=0;for(var k=0;k<i.length;k++)"
             "{if(i[k].complete&&i[k].naturalWidth>0)ok++;}document.title='decoded '+ok+'/'+i.length;};</script>")
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe + "</body>"), encoding="utf-8")
    (tmp_path / "noisy.html").write_text('<html><body><script>console.error("noisy")</script></body></html>')
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--enable-logging=stderr", "--v=0", "--window-size=1200,2400"]

    def browse(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(base + list(args), capture_output=True, text=True, timeout=120)

    assert ":CONSOLE" in browse("--dump-dom", (tmp_path / "noisy.html").as_uri()).stderr  # the check can see one
    dom = browse("--dump-dom", (tmp_path / "probe.html").as_uri())
    assert f"<title>decoded {len(FILES)}/{len(FILES)}</title>" in dom.stdout, dom.stderr[-2000:]
    shot = tmp_path / "shot.png"
    run = browse(f"--screenshot={shot}", (tmp_path / "r" / PAGE).as_uri())
    assert ":CONSOLE" not in run.stderr and ":CONSOLE" not in dom.stderr
    pixels = imread(shot)
    assert pixels.shape[0] > 1000 and float(pixels[..., :3].std()) > 0.02
