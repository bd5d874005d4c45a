"""bench/compare_throughput.py: a smoke run on the tiny models writes the results a user chooses a
model from (JSON with raw numbers and medians, Markdown table with ratios, PNG plots), peers are run
or skipped with a note, and bad input is one line with exit status 2. Also the energy meters'
arithmetic (RAPL counter, wrap-around) on a fake powercap directory."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "compare_throughput.py"
TINY = REPO / "models" / "tiny"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # spawned children import it by this name (bench/ is put on sys.path)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ct():
    return _load("compare_throughput", SCRIPT)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One real run: two ONNX models with their eval reports, the torch peer on the dense model
    directory, llama.cpp requested (a GGUF file is not given)."""
    out = tmp_path_factory.mktemp("ct")
    argv = [sys.executable, str(SCRIPT), "--model", f"dense={TINY / 'dense.onnx'}",
            "--model", f"pruned50={TINY / 'pruned50.onnx'}", "--torch", f"eager={TINY / 'dense'}",
            "--peers", "torch,llamacpp", "--repeats", "1", "--new-tokens", "4", "--prompt-lengths", "16",
            "--instructions", "1", "--threads", "1", "--out", str(out)]
    for name in ("dense", "pruned50"):
        report = TINY / name / "eval_test.json"
        if report.is_file():
            argv += ["--eval-report", f"{name}={report}"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_smoke_run_writes_results_table_and_plots(smoke):
    out, doc = smoke
    assert doc["order"][:2] == ["dense", "pruned50"]
    assert doc["manifest"]["cpu_count"] >= 1 and doc["manifest"]["onnxruntime"]["version"]
    assert doc["manifest"]["threads"] == 1
    assert doc["instruction_count"] == 1
    for name in ("dense", "pruned50"):
        r = doc["results"][name]
        s = r["summary"]
        assert r["kind"] == "onnx" and len(r["repeats"]) == 1
        assert r["info"]["parameters"] > 0 and r["info"]["file_bytes"] == (TINY / f"{name}.onnx").stat().st_size
        assert s["load_s"] > 0 and s["peak_rss_bytes"] > 0 and s["peak_rss_bytes"] >= s["rss_after_load_bytes"]
        assert s["prefill_ms"]["16"] > 0
        assert len(r["repeats"][0]["decode_times_s"]) == 4  # EOS ignored: the full length ran
        assert 0 < s["decode_ms_p50"] <= s["decode_ms_p90"] <= s["decode_ms_p99"]
        assert s["tokens_per_s"] > 0
        assert set(s["instructions"]) == {"free", "constrained"}
        assert s["instructions"]["constrained"]["parse_rate"] == 1.0  # the grammar makes every answer parse
        for mode in ("free", "constrained"):
            assert s["instructions"][mode]["p50_ms"] > 0
    # the pruned model has fewer parameters than the reference: the ratio row says so
    vs_ref = doc["ratios"]["vs_reference"]
    assert doc["ratios"]["reference"] == "dense" and vs_ref["dense"]["decode_speedup"] == 1.0
    assert vs_ref["pruned50"]["param_ratio"] > 1.0 and vs_ref["pruned50"]["decode_speedup"] > 0
    bytes_ratio = vs_ref["pruned50"]["streamed_bytes_ratio"]
    assert bytes_ratio == pytest.approx(doc["results"]["dense"]["info"]["streamed_weight_bytes"]
                                        / doc["results"]["pruned50"]["info"]["streamed_weight_bytes"])
    assert vs_ref["pruned50"]["decode_vs_bytes"] == pytest.approx(vs_ref["pruned50"]["decode_speedup"] / bytes_ratio)
    if (TINY / "dense" / "eval_test.json").is_file():
        score = doc["results"]["dense"]["score"]
        assert score["split"] == "test" and score["fraction_of_oracle_ci"] is not None
    md = (out / "results.md").read_text()
    assert "| dense | onnx |" in md and "| pruned50 | onnx |" in md and "Ratios vs `dense`" in md
    assert "| pruned50 |" in md.split("Ratios vs")[1]
    for png in ("ms_per_token_vs_params.png", "latency_cdfs.png", "score_vs_params.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_smoke_run_answers_instructions_with_the_vehicles_prefix_cache(smoke):
    out, doc = smoke
    assert doc["settings"]["prefix_cache"] is True
    for name in ("dense", "pruned50"):
        assert doc["results"][name]["summary"]["prefix_cache"] is True
    assert "prompt-prefix cache on, as on the vehicle (dense, pruned50" in (out / "results.md").read_text()


def _tiny_adapter(ct, name: str):
    from _runtimes import OnnxAdapter

    cfg = {"providers": None, "threads": 1, "prompt_lengths": [16], "new_tokens": 4}
    adapter = OnnxAdapter(ct.Entry(name, "onnx", str(TINY / f"{name}.onnx"), "--model"), cfg)
    adapter.load()
    return adapter


def test_onnx_adapter_prefix_cache_gives_the_same_answers(ct):
    """The benchmark registers exactly the worker's prefix; answers are those of a full prefill."""
    from edge_runtime.runtime.llm_worker import PREFIX_PROBES, register_mpc_prefix
    from edge_runtime.tasks.prompts import build_mpc_prompt

    plain, cached = _tiny_adapter(ct, "dense"), _tiny_adapter(ct, "dense")
    assert cached.use_prompt_prefix_cache() is True
    assert len(cached.gen.prefixes) == 1 and register_mpc_prefix(plain.gen) == len(cached.gen.prefixes[0].ids)
    plain.gen.clear_prefixes()
    for ins in ct.pick_instructions(3):
        prompt = build_mpc_prompt(ins.text)
        for constrained in (False, True):
            assert cached.answer(prompt, 40, constrained) == plain.answer(prompt, 40, constrained)
    assert cached.gen.prefix_stats["full"] == 6 and plain.gen.prefix_stats["full"] == 0
    assert PREFIX_PROBES  # the probes are the worker's own


def test_llamacpp_adapter_reuses_the_prompt_prefix_it_holds(ct, tmp_path):
    """llama-cpp-python's own prefix reuse: the same greedy answers as a full prefill, and only the
    prompt's suffix is evaluated (n_tokens before the eval equals the shared prefix)."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from _runtimes import LlamaCppAdapter
    from edge_runtime.export.gguf_export import export_gguf
    from edge_runtime.tasks.prompts import build_mpc_prompt

    gguf = export_gguf(TINY / "dense", tmp_path / "dense.gguf", "f32").out
    cfg = {"providers": None, "threads": 1, "prompt_lengths": [16], "new_tokens": 4, "chat_format": None}
    plain, reuse = (LlamaCppAdapter(ct.Entry(n, "llamacpp", str(gguf), "--gguf"), cfg) for n in ("plain", "reuse"))
    plain.load()
    reuse.load()
    assert reuse.use_prompt_prefix_cache() is True
    evaluated: list[int] = []
    real_eval = reuse.llm.eval
    reuse.llm.eval = lambda tokens: (evaluated.append(len(tokens)), real_eval(tokens))[1]
    prompts = [build_mpc_prompt(i.text) for i in ct.pick_instructions(3)]
    for prompt in prompts:
        evaluated.clear()
        assert reuse.answer(prompt, 24, False) == plain.answer(prompt, 24, False)
        if prompt is not prompts[0]:
            assert evaluated[0] < len(reuse.encode(prompt)) // 2  # the shared beginning was not run again


def test_smoke_run_torch_peer_runs_or_is_skipped(smoke):

    _, doc = smoke
    notes = " ".join(doc["notes"])
    if importlib.util.find_spec("torch") is None:
        assert "torch: skipped: not installed" in notes
        return
    eager = doc["results"]["eager"]
    assert eager["kind"] == "torch" and eager["info"]["parameters"] == doc["results"]["dense"]["info"]["parameters"]
    assert eager["summary"]["decode_ms_p50"] > 0 and "constrained" not in eager["summary"]["instructions"]
    assert eager["summary"]["prefix_cache"] is False  # no prefix cache in the torch loop: said, not pretended
    assert "dense / eager" in doc["ratios"]["vs_peers"]
    if importlib.util.find_spec("llama_cpp") is None:
        assert "llamacpp: skipped: not installed (pip install llama-cpp-python)" in doc["notes"]
    else:
        assert "llamacpp: skipped: no --gguf NAME=PATH given" in doc["notes"]


def test_missing_peer_package_is_a_note(ct, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(ct.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime_genai" else real(name, *a))
    args = ct._Parser().parse_args([])  # defaults of an empty parser, then the fields build_entries reads
    for key, value in {"model": [f"dense={TINY / 'dense.onnx'}"], "ortgenai": [f"g={TINY / 'dense'}"],
                       "gguf": None, "torch": None, "peers": "ortgenai"}.items():
        setattr(args, key, value)
    entries, skipped, notes = ct.build_entries(args)
    assert [e.kind for e in entries] == ["onnx"] and skipped == ["ortgenai"]
    assert notes == ["ortgenai: skipped: not installed (pip install onnxruntime-genai)"]


@pytest.mark.parametrize("extra, expected", [
    (["--model", "dense"], "--model 'dense': expected NAME=PATH"),
    (["--model", "dense=/nonexistent/x.onnx"], "file /nonexistent/x.onnx not found"),
    (["--model", f"dense={TINY / 'dense.onnx'}", "--torch", "t=/nonexistent"], "--torch t=/nonexistent"),
    (["--model", f"dense={TINY / 'dense.onnx'}", "--peers", "vllm"], "unknown peer 'vllm'"),
    (["--model", f"dense={TINY / 'dense.onnx'}", "--eval-report", f"other={TINY / 'dense' / 'eval_test.json'}"],
     "no model named 'other'"),
    (["--model", f"a={TINY / 'dense.onnx'}", "--model", f"a={TINY / 'pruned50.onnx'}"], "a is used twice"),
    (["--model", f"dense={TINY / 'dense.onnx'}", "--prompt-lengths", "64,x"], "--prompt-lengths"),
    (["--model", f"dense={TINY / 'dense.onnx'}", "--repeats", "0"], "--repeats"),
])
def test_bad_input_is_one_line_and_exit_2(ct, capsys, tmp_path, extra, expected):
    with pytest.raises(SystemExit) as exc:
        ct.main([*extra, "--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()


def test_eval_report_that_is_not_json_exits_2(ct, capsys, tmp_path):
    bad = tmp_path / "eval.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        ct.main(["--model", f"dense={TINY / 'dense.onnx'}", "--eval-report", f"dense={bad}", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a JSON report" in err


def test_model_that_does_not_load_exits_2_naming_it(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an ONNX file")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", f"broken={bad}", "--repeats", "1",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("compare_throughput:")]
    assert len(lines) == 1 and f"--model broken={bad}" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_rapl_meter_counts_joules_and_wraps(tmp_path):
    energy = _load("_energy", REPO / "bench" / "_energy.py")
    (tmp_path / "energy_uj").write_text("1000000\n")
    (tmp_path / "max_energy_range_uj").write_text("5000000\n")
    meter = energy.RaplMeter(tmp_path)
    meter.start()
    (tmp_path / "energy_uj").write_text("3500000\n")
    assert meter.stop() == pytest.approx(2.5)
    meter.start()
    (tmp_path / "energy_uj").write_text("500000\n")  # wrapped past 5 J
    assert meter.stop() == pytest.approx(2.0)
    with pytest.raises(OSError):
        energy.RaplMeter(tmp_path / "missing")


def test_streamed_weight_bytes_counts_what_a_decode_step_reads():
    """fp32, tied: every parameter once (the shared table as the LM head's weight; the embedding
    gather and the RoPE caches read a row per token). The shipped SmolLM2 file: the 8-bit table
    once, as the head, plus 4-bit projections with their scales -- far below its file's fp32 size."""
    sys.path.insert(0, str(REPO / "bench"))
    from _common import streamed_weight_bytes
    from edge_runtime.decoding.generator import OnnxGenerator

    spec = OnnxGenerator(TINY / "dense.onnx").spec
    fp32 = streamed_weight_bytes(TINY / "dense.onnx")
    assert 4 * spec.num_parameters() <= fp32 <= 4 * spec.num_parameters() + 1024
    shipped = REPO / "models" / "dense.onnx"
    spec = OnnxGenerator(shipped).spec
    table = spec.vocab_size * spec.hidden_size
    projections = spec.num_parameters() - table
    streamed = streamed_weight_bytes(shipped)
    assert table + projections / 2 < streamed < 1.1 * table + 0.7 * projections
