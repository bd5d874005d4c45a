# ruff: noqa: F811 -- the fixtures imported from test_export are requested by name as arguments
"""The shared-KV-cache decoder graph: contract, parity with PyTorch and with the traced graph
(dense, non-uniform pruned, Llama untied, int8 / int4), in-place cache reuse, constrained
decoding over it, capacity and unsupported-model errors, and the edge-export flags."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx_fixtures import vocab_tables, with_metadata
# the dense and non-uniform pruned model directories (and their tokenizer) of the export tests
from test_export import dense_dir, validation_prompts, llama_dir, pruned_dir, tokenizer_path, vocab, workdir  # noqa: F401

from edge_runtime.export import cli
from edge_runtime.export.errors import ExportError
from edge_runtime.export.onnx_export import export_onnx
from edge_runtime.export.parity import TOLERANCES, check_parity
from edge_runtime.export.quantize import QuantizeConfig, quantize_onnx
from edge_runtime.export.shared_cache_graph import check_supported
from edge_runtime.model.build import preset_spec
from edge_runtime.contracts.arch_spec import ArchSpec
from edge_runtime.decoding.generator import OnnxGenerator
from edge_runtime.decoding.model_file import ModelLoadError

torch.set_num_threads(1)
CAPACITY = 768


@pytest.fixture(scope="module")
def pruned_shared(pruned_dir, workdir) -> Path:
    return export_onnx(pruned_dir, workdir / "pruned-shared.onnx", kv_cache="shared", capacity=CAPACITY)


@pytest.fixture(scope="module")
def pruned_concat(pruned_dir, workdir) -> Path:
    return export_onnx(pruned_dir, workdir / "pruned-concat.onnx")


def test_graph_contract_and_metadata(pruned_shared, pruned_dir):
    spec = ArchSpec.load(pruned_dir / "arch_spec.json")
    assert not spec.is_uniform
    proto = onnx.load(str(pruned_shared))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["edge_runtime.kv_cache"]) == {"layout": "shared", "capacity": CAPACITY}
    inputs = {i.name: i for i in proto.graph.input}
    outputs = {o.name: o for o in proto.graph.output}
    assert {"input_ids", "attention_mask", "position_ids", "logits"} <= set(inputs) | set(outputs)
    for i, layer in enumerate(spec.layers):
        for kind in ("key", "value"):
            for t in (inputs[f"past_key_values.{i}.{kind}"], outputs[f"present.{i}.{kind}"]):
                dims = t.type.tensor_type.shape.dim
                assert [dims[1].dim_value, dims[2].dim_value, dims[3].dim_value] == \
                    [layer.num_kv_heads, CAPACITY, spec.head_dim]
    gqa = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    assert [next(a.i for a in n.attribute if a.name == "num_heads") for n in gqa] == \
        [layer.num_q_heads for layer in spec.layers]


@pytest.mark.parametrize("which", ["dense", "pruned"])
def test_parity_with_pytorch(which, request, workdir):
    model_dir = request.getfixturevalue(f"{which}_dir")
    path = export_onnx(model_dir, workdir / f"{which}-parity.onnx", kv_cache="shared", capacity=CAPACITY)
    report = check_parity(model_dir, path, validation_prompts(3), max_new_tokens=24)
    assert report.ok and report.identical_answers == 3, report.summary()
    assert report.max_abs_logit_diff < TOLERANCES["fp32"].atol
    assert vocab_tables(path) == 1  # tied: the LM head reads Transpose(embed_tokens), stored once


def test_same_tokens_and_logits_as_the_traced_graph(pruned_shared, pruned_concat):
    shared, concat = OnnxGenerator(pruned_shared, threads=1), OnnxGenerator(pruned_concat, threads=1)
    for prompt in validation_prompts(3):
        ids = shared.encode(prompt)
        np.testing.assert_allclose(shared.prefill_logits(ids), concat.prefill_logits(ids), atol=2e-4, rtol=0)
        a, b = shared.generate(prompt, 30), concat.generate(prompt, 30)
        assert a.token_ids == b.token_ids and a.text == b.text
        # incremental decode over the in-place cache: logits of every step match the traced graph
        sa, sb = shared.start(), concat.start()
        sa.append_tokens(ids), sb.append_tokens(ids)
        for token in a.token_ids[:6]:
            np.testing.assert_allclose(sa.append_tokens([token]), sb.append_tokens([token]), atol=2e-4, rtol=0)


def test_cache_buffers_are_allocated_once_and_updated_in_place(pruned_shared):
    gen = OnnxGenerator(pruned_shared, threads=1)
    prompt = validation_prompts(1)[0]
    first = gen.start().kv_cache
    pointers = [v.data_ptr() for v in first]
    res = gen.generate(prompt, 20, stop_at_eos=False)
    assert res.emitted_tokens == 20
    assert gen.start().kv_cache is first and [v.data_ptr() for v in first] == pointers
    # the buffer holds the prompt's and the generated tokens' keys: a run on top of it continues the sequence
    n = res.prompt_tokens + res.emitted_tokens - 1
    key0 = first[0].numpy()
    assert np.abs(key0[0, :, :n]).sum() > 0
    again = gen.generate(prompt, 20, stop_at_eos=False)  # reusing the buffer gives the same answer
    assert again.token_ids == res.token_ids


def test_constrained_decoding_over_the_shared_cache(pruned_shared, pruned_concat):
    """Forced tokens go through the graph several at a time: the in-place append must handle seq > 1."""
    shared = OnnxGenerator(pruned_shared, threads=1, constrained=True)
    concat = OnnxGenerator(pruned_concat, threads=1, constrained=True)
    for prompt in validation_prompts(2):
        a, b = shared.generate(prompt, 120), concat.generate(prompt, 120)
        assert a.token_ids == b.token_ids and a.forced_tokens == b.forced_tokens > 0


def test_capacity_is_checked_before_running(pruned_dir, workdir):
    path = export_onnx(pruned_dir, workdir / "small-cap.onnx", kv_cache="shared", capacity=64)
    gen = OnnxGenerator(path, threads=1)
    with pytest.raises(ValueError, match="capacity 64"):
        gen.generate(validation_prompts(1)[0], 10)  # the prompt alone is longer than 64 tokens
    short = gen.decode(gen.encode(validation_prompts(1)[0])[:40])
    with pytest.raises(ValueError, match="--kv-capacity"):
        gen.generate(short, 30)
    assert gen.generate(short, 20, stop_at_eos=False).emitted_tokens == 20


@pytest.mark.slow
def test_quantized_variants_of_the_shared_graph(pruned_dir, pruned_shared, pruned_concat, workdir):
    """int8 / int4 of the shared graph are as close to the reference as the same quantization of
    the traced graph: same MatMul weights, same quantizer. (Absolute floors are calibrated on
    trained models, see export/parity.py; a random model is far from them in both layouts.)"""
    for kind in ("int8", "int4"):
        reports = {}
        for layout, src in (("shared", pruned_shared), ("concat", pruned_concat)):
            dst = workdir / f"pruned-{layout}-{kind}.onnx"
            assert quantize_onnx(src, dst, QuantizeConfig(kind, block_size=16)).quantized
            reports[layout] = check_parity(pruned_dir, dst, validation_prompts(2), max_new_tokens=16)
        gen = OnnxGenerator(workdir / f"pruned-shared-{kind}.onnx", threads=1)
        assert gen.kv_layout == "shared" and gen.kv_capacity == CAPACITY
        shared, concat = reports["shared"], reports["concat"]
        assert 1e-3 < shared.max_abs_logit_diff <= 1.25 * concat.max_abs_logit_diff, (shared.summary(), concat.summary())
        assert shared.token_agreement >= concat.token_agreement - 0.1, (shared.summary(), concat.summary())


def test_llama_untied_nonuniform(llama_dir, workdir):
    model_dir = llama_dir
    path = export_onnx(model_dir, workdir / "llama-shared.onnx", kv_cache="shared", capacity=CAPACITY)
    report = check_parity(model_dir, path, validation_prompts(2), max_new_tokens=16)
    assert report.ok and report.identical_answers == 2, report.summary()
    assert vocab_tables(path) == 2  # untied: the LM head keeps its own matrix


def test_unsupported_models_and_arguments(pruned_dir, workdir, vocab):
    spec = preset_spec("qwen2-1m", vocab_size=vocab)
    assert check_supported(spec, 1024) is None
    assert "multiple of 16" in check_supported(preset_spec("qwen2-1m", vocab_size=vocab, head_dim=24), 1024)
    assert "capacity" in check_supported(spec, 1)
    with pytest.raises(ExportError, match="float32 only"):
        export_onnx(pruned_dir, workdir / "x.onnx", dtype="fp16", kv_cache="shared")
    with pytest.raises(ExportError, match="kv_cache layout"):
        export_onnx(pruned_dir, workdir / "x.onnx", kv_cache="ring")
    assert not (workdir / "x.onnx").exists()


def test_bad_kv_cache_metadata_is_refused(pruned_shared, tmp_path):
    bad = with_metadata(pruned_shared, tmp_path / "bad.onnx", lambda p: p.update({"edge_runtime.kv_cache": '{"layout": "ring"}'}))
    with pytest.raises(ModelLoadError, match="kv_cache"):
        OnnxGenerator(bad)
    wrong_cap = with_metadata(pruned_shared, tmp_path / "cap.onnx",
                              lambda p: p.update({"edge_runtime.kv_cache": '{"layout": "shared", "capacity": 99}'}))
    with pytest.raises(ModelLoadError, match="99"):
        OnnxGenerator(wrong_cap)


def test_cli_layouts(pruned_dir, tmp_path, capsys):
    out = tmp_path / "auto.onnx"
    assert cli.main([str(pruned_dir), "-o", str(out), "--parity-prompts", "1", "--decision-prompts", "0",
                     "--max-new-tokens", "8", "--kv-capacity", "600"]) == 0
    assert "shared KV cache, capacity 600" in capsys.readouterr().out
    assert OnnxGenerator(out).kv_capacity == 600
    out16 = tmp_path / "fp16.onnx"
    assert cli.main([str(pruned_dir), "-o", str(out16), "--dtype", "fp16", "--parity-prompts", "1",
                     "--decision-prompts", "0", "--max-new-tokens", "8"]) == 0
    assert "concat KV cache" in capsys.readouterr().out and OnnxGenerator(out16).kv_layout == "concat"
    for args, needle in ((["--kv-cache", "ring"], "--kv-cache"),
                         (["--kv-cache", "shared", "--dtype", "fp16"], "float32 only"),
                         (["--kv-capacity", "1"], "--kv-capacity")):
        assert cli.main([str(pruned_dir), "-o", str(tmp_path / "x.onnx")] + args) == 2
        assert needle in capsys.readouterr().err
