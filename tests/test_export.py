"""ONNX export with KV cache: graph contract, metadata, parity (fp32 / fp16, dense / non-uniform), CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx_fixtures import vocab_tables

from edge_runtime.control.params import PARAM_NAMES
from edge_runtime.export import cli
from edge_runtime.export.errors import ExportError
from edge_runtime.export.onnx_export import META_KEYS, export_onnx, input_names, output_names
from edge_runtime.export.parity import TOLERANCES, ParityReport, check_parity
from edge_runtime.model.build import build_model, preset_spec, resize_layer
from edge_runtime.model.io import load_model, save_model
from edge_runtime.contracts.arch_spec import ArchSpec, LayerSpec
from edge_runtime.model.tokenizer import save_tokenizer, train_tokenizer
from edge_runtime.decoding.model_file import REQUIRED_METADATA
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.contracts.answer_format import PROMPT_VERSION
from edge_runtime.tasks.prompts import build_mpc_prompt

torch.set_num_threads(1)

#: Resized layers of the non-uniform model: (index, LayerSpec); the preset's layers are (4, 2, 384).
PRUNED_LAYERS = ((1, LayerSpec(2, 1, 128)), (2, LayerSpec(4, 1, 256)))
#: Weight scale: the default init (std 0.02) makes a random model repeat one token; std ~0.12
#: gives varied greedy tokens (and some early EOS), a stricter parity test.
WEIGHT_SCALE = 6.0


def validation_prompts(n: int) -> list[str]:
    return [build_mpc_prompt(i.text) for i in instruction_set("validation")[:: 3][:n]]


def make_model_dir(out: Path, tokenizer_path: Path, vocab: int, nonuniform: bool, seed: int = 0) -> Path:
    model = build_model(preset_spec("qwen2-1m", vocab_size=vocab), seed=seed)
    if nonuniform:
        gen = torch.Generator().manual_seed(seed + 100)
        for index, layer_spec in PRUNED_LAYERS:
            resize_layer(model, index, layer_spec)
            with torch.no_grad():
                for module in model.model.layers[index].modules():
                    if isinstance(module, torch.nn.Linear):
                        module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)
                        if module.bias is not None:
                            module.bias.zero_()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(WEIGHT_SCALE)
    return save_model(model, out, tokenizer_json=tokenizer_path)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def tokenizer_path(workdir) -> Path:
    corpus = [build_mpc_prompt(i.text) for i in instruction_set("train")[:20]]
    return save_tokenizer(train_tokenizer(corpus, vocab_size=320), workdir / "tok.json")


@pytest.fixture(scope="module")
def vocab(tokenizer_path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()


@pytest.fixture(scope="module")
def dense_dir(workdir, tokenizer_path, vocab) -> Path:
    return make_model_dir(workdir / "dense", tokenizer_path, vocab, nonuniform=False)


@pytest.fixture(scope="module")
def pruned_dir(workdir, tokenizer_path, vocab) -> Path:
    return make_model_dir(workdir / "pruned", tokenizer_path, vocab, nonuniform=True, seed=1)


@pytest.fixture(scope="module")
def dense_fp32(dense_dir, workdir) -> Path:
    return export_onnx(dense_dir, workdir / "dense.onnx")


@pytest.fixture(scope="module")
def pruned_fp32(pruned_dir, workdir) -> Path:
    return export_onnx(pruned_dir, workdir / "pruned.onnx")


@pytest.fixture(scope="module")
def pruned_fp16(pruned_dir, workdir) -> Path:
    return export_onnx(pruned_dir, workdir / "pruned-fp16.onnx", dtype="fp16")


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------ graph contract
@pytest.mark.parametrize("which", ["pruned_fp32", "pruned_fp16"])
def test_graph_names_and_per_layer_kv_shapes(which, request, pruned_dir):
    path = request.getfixturevalue(which)
    spec = ArchSpec.load(pruned_dir / "arch_spec.json")
    assert not spec.is_uniform
    float_type = "tensor(float16)" if which.endswith("fp16") else "tensor(float)"
    sess = session(path)
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = {o.name: o for o in sess.get_outputs()}
    assert [i.name for i in sess.get_inputs()] == input_names(spec)
    assert [o.name for o in sess.get_outputs()] == output_names(spec)
    for name in ("input_ids", "attention_mask", "position_ids"):
        assert inputs[name].type == "tensor(int64)"
        assert len(inputs[name].shape) == 2 and all(isinstance(d, str) for d in inputs[name].shape)
    assert outputs["logits"].type == float_type
    assert outputs["logits"].shape[2] == spec.vocab_size and isinstance(outputs["logits"].shape[1], str)
    for i, layer in enumerate(spec.layers):
        for kind in ("key", "value"):
            past, present = inputs[f"past_key_values.{i}.{kind}"], outputs[f"present.{i}.{kind}"]
            assert past.type == present.type == float_type
            assert past.shape[1] == present.shape[1] == layer.num_kv_heads
            assert past.shape[3] == present.shape[3] == spec.head_dim
            assert isinstance(past.shape[0], str) and isinstance(past.shape[2], str)
            assert past.shape[2] != present.shape[2]  # past_seq vs past_seq + seq
    # the same contract read from the file itself
    proto = onnx.load(str(path), load_external_data=False)
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[3].type.tensor_type.shape.dim]
    assert dims == ["batch", spec.layers[0].num_kv_heads, "past_seq", spec.head_dim]


def _feed(spec, ids, mask, positions, past, dtype):
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    batch = ids.shape[0]
    for i, (b, kv, p, d) in enumerate(spec.kv_cache_shapes(batch, 0)):
        for j, kind in enumerate(("key", "value")):
            feed[f"past_key_values.{i}.{kind}"] = past[2 * i + j] if past is not None else np.zeros((b, kv, 0, d), dtype)
    return feed


def test_zero_past_prefill_incremental_decode_and_left_padding(pruned_fp32, pruned_dir):
    """ORT accepts past_len 0; prefill-then-decode equals one long prefill equals PyTorch; a
    left-padded batch row equals the unpadded row."""
    model, spec = load_model(pruned_dir)
    ids = np.random.default_rng(0).integers(4, spec.vocab_size, size=(1, 9), dtype=np.int64)
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    sess = session(pruned_fp32)
    full = sess.run(None, _feed(spec, ids, np.ones((1, 9), np.int64), np.arange(9)[None], None, np.float32))
    assert np.abs(full[0] - ref).max() < 1e-4
    assert [full[1 + 2 * i].shape for i in range(spec.num_layers)] == spec.kv_cache_shapes(1, 9)
    out = sess.run(None, _feed(spec, ids[:, :5], np.ones((1, 5), np.int64), np.arange(5)[None], None, np.float32))
    steps, past = [out[0]], out[1:]
    for k in range(5, 9):
        out = sess.run(None, _feed(spec, ids[:, k:k + 1], np.ones((1, k + 1), np.int64), np.array([[k]]), past, np.float32))
        steps.append(out[0])
        past = out[1:]
    assert np.abs(np.concatenate(steps, axis=1) - ref).max() < 1e-4
    # batch of two: row 1 is the last 6 tokens, left-padded by 3
    batch = np.concatenate([ids, ids], axis=0)
    batch[1, :3] = 1
    mask = np.ones((2, 9), np.int64)
    mask[1, :3] = 0
    positions = np.stack([np.arange(9), np.clip(np.arange(9) - 3, 0, None)])
    out = sess.run(None, _feed(spec, batch, mask, positions, None, np.float32))
    with torch.no_grad():
        ref_short = model(input_ids=torch.from_numpy(ids[:, 3:])).logits.numpy()
    assert np.isfinite(out[0]).all()
    assert np.abs(out[0][0] - ref[0]).max() < 1e-4
    assert np.abs(out[0][1, 3:] - ref_short[0]).max() < 1e-4


# -------------------------------------------------------------------------------- metadata
def test_metadata_round_trip(pruned_fp32, pruned_dir, tokenizer_path):
    meta = dict(session(pruned_fp32).get_modelmeta().custom_metadata_map)
    assert set(META_KEYS) <= set(meta)
    assert set(META_KEYS) == set(REQUIRED_METADATA)  # what the writer writes is what the runtime requires
    assert meta["edge_runtime.format_version"] == "1"
    assert ArchSpec.from_dict(json.loads(meta["edge_runtime.arch_spec"])) == ArchSpec.load(pruned_dir / "arch_spec.json")
    assert meta["edge_runtime.tokenizer"] == tokenizer_path.read_text(encoding="utf-8")
    assert meta["edge_runtime.prompt_version"] == str(PROMPT_VERSION)
    assert meta["edge_runtime.dtype"] == "fp32"
    schema = json.loads(meta["edge_runtime.answer_schema"])
    assert [p["name"] for p in schema["parameters"]] == list(PARAM_NAMES)
    assert all(p["low"] <= p["default"] <= p["high"] for p in schema["parameters"])
    generation = json.loads(meta["edge_runtime.generation"])
    assert generation["eos_id"] == 0 and generation["pad_id"] == 1 and generation["greedy"] is True
    assert generation["max_new_tokens"] == {"mpc": 200, "decision": 48}
    source = json.loads((pruned_dir / "edge_runtime_meta.json").read_text())["model_sha256"]
    assert meta["edge_runtime.source_sha256"] == source
    onnx.checker.check_model(onnx.load(str(pruned_fp32)))


def test_export_errors_and_atomic_write(pruned_dir, workdir, tmp_path):
    with pytest.raises(ExportError, match="dtype"):
        export_onnx(pruned_dir, tmp_path / "x.onnx", dtype="int8")
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(tmp_path / "nope", tmp_path / "x.onnx")
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for f in pruned_dir.iterdir():
        if f.name != "tokenizer.json":
            (no_tok / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ExportError, match="tokenizer.json"):
        export_onnx(no_tok, tmp_path / "x.onnx")
    assert list(tmp_path.glob("*.onnx")) == [] and not any(".tmp-" in p.name for p in tmp_path.iterdir())
    assert not any(".tmp-" in p.name for p in workdir.iterdir())


# ---------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("which", ["dense", "pruned"])
def test_fp32_parity(which, request):
    model_dir = request.getfixturevalue(f"{which}_dir")
    path = request.getfixturevalue(f"{which}_fp32")
    report = check_parity(model_dir, path, validation_prompts(3), max_new_tokens=24)
    assert isinstance(report, ParityReport)
    assert report.ok, report.summary()
    assert report.n_prompts == 3 and report.identical_answers == 3
    assert report.max_abs_logit_diff < TOLERANCES["fp32"].atol
    assert all(d["identical"] and d["logits_ok"] for d in report.details)
    assert vocab_tables(path) == 1  # tied: the LM head reads the embedding table, stored once


def test_tied_table_is_stored_once_in_the_traced_graph(dense_fp32):
    proto = onnx.load(str(dense_fp32))
    head = next(n for n in proto.graph.node if n.op_type == "MatMul" and "logits" in n.output)
    (transpose,) = [n for n in proto.graph.node if n.output[0] == head.input[1]]
    gather = next(n for n in proto.graph.node if n.op_type == "Gather" and n.input[0] == transpose.input[0])
    assert transpose.op_type == "Transpose" and gather.input[0] in {i.name for i in proto.graph.initializer}


@pytest.fixture(scope="module")
def llama_dir(workdir, tokenizer_path, vocab) -> Path:
    """The other family: Llama (no q/k/v bias, untied LM head), one layer pruned to a 4:1 group."""
    model = build_model(preset_spec("llama-4m", vocab_size=vocab, num_layers=2, intermediate_size=256), seed=2)
    resize_layer(model, 1, LayerSpec(4, 1, 128))
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return save_model(model, workdir / "llama", tokenizer_json=tokenizer_path)


def test_llama_nonuniform_untied_parity(llama_dir, workdir):
    model_dir = llama_dir
    path = export_onnx(model_dir, workdir / "llama.onnx")
    spec = ArchSpec.load(model_dir / "arch_spec.json")
    assert spec.family == "llama" and not spec.tie_word_embeddings and not spec.is_uniform
    report = check_parity(model_dir, path, validation_prompts(2), max_new_tokens=16)
    assert report.ok and report.identical_answers == 2, report.summary()
    assert vocab_tables(path) == 2  # untied: the LM head keeps its own matrix


def test_fp16_parity_and_size(pruned_dir, pruned_fp16, pruned_fp32):
    report = check_parity(pruned_dir, pruned_fp16, validation_prompts(3), max_new_tokens=24)
    assert report.dtype == "fp16"
    assert report.ok, report.summary()
    assert report.max_abs_logit_diff <= report.logit_tolerance
    assert report.identical_answers + report.near_ties == report.n_prompts
    assert pruned_fp16.stat().st_size <= 0.55 * pruned_fp32.stat().st_size
    assert vocab_tables(pruned_fp16) == 1


def test_parity_fails_for_other_weights(dense_fp32, workdir, tokenizer_path, vocab):
    other = make_model_dir(workdir / "other", tokenizer_path, vocab, nonuniform=False, seed=7)
    report = check_parity(other, dense_fp32, validation_prompts(1), max_new_tokens=8)
    assert not report.ok
    assert "source_sha256" in report.message
    assert report.max_abs_logit_diff > 1e-2
    assert "FAILED" in report.summary()


# ------------------------------------------------------------------------------------- CLI
def test_cli_end_to_end(pruned_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "model.onnx"
    rc = cli.main([str(pruned_dir), "-o", str(out), "--parity-prompts", "2", "--decision-prompts", "1",
                   "--max-new-tokens", "12"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert out.is_file()
    assert "identical answers  3/3" in printed and "max |logit diff|" in printed and "MiB" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no temp files left


@pytest.mark.parametrize("args, needle", [
    (["--dtype", "int4"], "--dtype"),
    (["--parity-prompts", "0", "--decision-prompts", "0"], "at least one prompt"),
    (["--bogus"], "unrecognized arguments"),
])
def test_cli_bad_input_exit_2(pruned_dir, tmp_path, capsys, args, needle):
    rc = cli.main([str(pruned_dir), "-o", str(tmp_path / "m.onnx"), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and err.count("\n") == 1 and err.startswith("edge-export: error:")
    assert not list(tmp_path.iterdir())


def test_cli_missing_dir_exit_2(tmp_path, capsys):
    rc = cli.main([str(tmp_path / "missing"), "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and "does not exist" in err and err.count("\n") == 1


def test_cli_incomplete_dir_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = cli.main([str(tmp_path / "empty"), "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and "arch_spec.json" in err and err.count("\n") == 1


@pytest.mark.parametrize("keep", [False, True])
def test_cli_parity_failure_exit_1(pruned_dir, tmp_path, capsys, monkeypatch, keep):
    from edge_runtime.export import parity

    def failing(*args, **kwargs):
        return ParityReport(ok=False, max_abs_logit_diff=0.5, identical_answers=0, n_prompts=1,
                            dtype="fp32", logit_tolerance=1e-3, message="prompt 0: logit diff 0.5 > 0.001")

    monkeypatch.setattr(parity, "check_parity", failing)
    out = tmp_path / "m.onnx"
    rc = cli.main([str(pruned_dir), "-o", str(out), "--parity-prompts", "1", "--decision-prompts", "0",
                   *(["--keep-failed"] if keep else [])])
    captured = capsys.readouterr()
    assert rc == 1
    assert "parity FAILED" in captured.err and "was not written" in captured.err
    assert not out.exists()
    kept = tmp_path / "m.parity-failed.onnx"
    assert kept.is_file() == keep
    assert sorted(p.name for p in tmp_path.iterdir()) == (["m.parity-failed.onnx"] if keep else [])


def test_cli_external_data_writes_two_files_that_decode_like_one(pruned_dir, tmp_path, capsys):
    """--external-data: OUT holds the graph, OUT.data the weights; the pair decodes exactly as the
    self-contained file does, a re-export replaces both, and a failed parity check leaves an
    existing pair untouched."""
    from edge_runtime.decoding.generator import OnnxGenerator

    one, two = tmp_path / "one" / "m.onnx", tmp_path / "two" / "m.onnx"
    common = ["--parity-prompts", "1", "--decision-prompts", "0", "--max-new-tokens", "8"]
    assert cli.main([str(pruned_dir), "-o", str(one), *common]) == 0
    assert cli.main([str(pruned_dir), "-o", str(two), "--external-data", *common]) == 0
    printed = capsys.readouterr().out
    assert "m.onnx.data" in printed
    assert sorted(p.name for p in two.parent.iterdir()) == ["m.onnx", "m.onnx.data"]  # no staging left
    data = two.with_name("m.onnx.data")
    assert two.stat().st_size < data.stat().st_size and data.stat().st_size > 0.9 * one.stat().st_size
    moved = tmp_path / "elsewhere"  # the graph names its data file relatively: the pair moves together
    two.parent.rename(moved)
    prompt = "Drive on the centre line."
    a, b = OnnxGenerator(one).generate(prompt, 12), OnnxGenerator(moved / "m.onnx").generate(prompt, 12)
    assert a.token_ids == b.token_ids
    before = {p.name: p.read_bytes() for p in moved.iterdir()}
    from edge_runtime.export import parity

    real = parity.check_parity
    try:
        parity.check_parity = lambda *args, **kwargs: ParityReport(
            ok=False, max_abs_logit_diff=0.5, identical_answers=0, n_prompts=1, dtype="fp32", logit_tolerance=1e-3,
            message="forced")
        assert cli.main([str(pruned_dir), "-o", str(moved / "m.onnx"), "--external-data", *common]) == 1
    finally:
        parity.check_parity = real
    assert {p.name: p.read_bytes() for p in moved.iterdir()} == before


def test_cli_external_data_is_an_onnx_option(pruned_dir, tmp_path, capsys):
    rc = cli.main([str(pruned_dir), "-o", str(tmp_path / "m.gguf"), "--external-data"])
    err = capsys.readouterr().err
    assert rc == 2 and "--external-data" in err and err.count("\n") == 1


def test_parity_prompts_check_every_category_in_turn():
    """Every second instruction used to skip a whole category (racing_line): a quantization that
    breaks one category alone would then never be looked at."""
    instructions = instruction_set("validation")
    by_prompt = {build_mpc_prompt(i.text): i for i in instructions}
    categories = [c for c in dict.fromkeys(i.category for i in instructions)]
    for n in (len(categories), 10, len(instructions)):
        mpc, decision = cli.parity_prompts(n, 0)
        assert decision == [] and len(mpc) == len(set(mpc)) == n
        assert {by_prompt[p].category for p in mpc} == set(categories)
    first_round = [by_prompt[p].category for p in cli.parity_prompts(len(categories), 0)[0]]
    assert first_round == categories  # one of each, in the split's order
    assert sorted(cli.parity_prompts(10 * len(instructions), 0)[0]) == sorted(by_prompt)  # each once, no repeats
