"""Quantized and fp16 exports: parity for a dense and a non-uniform pruned tiny model, metadata,
runtime, MatMulNBits padding, errors, and the ``edge-export --quantize`` CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx_fixtures import vocab_tables

from edge_runtime.export import cli
from edge_runtime.export.onnx_export import META_KEYS, export_onnx
from edge_runtime.export.parity import TOLERANCES, check_parity, parity_variant
from edge_runtime.export.tied_head import unshare_tied_table
from edge_runtime.export.quantize import (
    DEFAULT_INT8_METHOD,
    QUANTIZATION_KEY,
    QUANTIZATIONS,
    QuantizeConfig,
    QuantizeError,
    quantization_of,
    quantize_onnx,
    weight_matmuls,
)
from edge_runtime.model.build import build_model
from edge_runtime.model.io import save_model
from edge_runtime.contracts.arch_spec import ArchSpec, LayerSpec
from edge_runtime.model.tokenizer import save_tokenizer, train_tokenizer
from edge_runtime.decoding.generator import OnnxGenerator
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.tasks.prompts import build_mpc_prompt

torch.set_num_threads(1)

#: Weight scale of the random tiny models: the default init (std 0.02) repeats one token; x3
#: (std 0.06) gives a few distinct greedy tokens while staying far from the chaotic regime in
#: which 4-bit rounding flips most argmaxes (see edge_runtime.export.parity's docstring).
WEIGHT_SCALE = 3.0
#: The non-uniform pruned spec: per-layer query / KV heads and MLP widths all differ; layer 1's
#: MLP width 200 is not a multiple of the int4 block (32), layer 1's o_proj K is 2 x 32 = 64.
PRUNED_LAYERS = (LayerSpec(4, 2, 384), LayerSpec(2, 1, 200), LayerSpec(4, 1, 96))
DENSE_LAYERS = (LayerSpec(4, 2, 384),) * 2
PROMPTS = [build_mpc_prompt(i.text) for i in instruction_set("validation")[::3][:3]]
BUDGET = 24


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quant")


@pytest.fixture(scope="module")
def tokenizer_path(workdir) -> Path:
    corpus = [build_mpc_prompt(i.text) for i in instruction_set("train")[:20]]
    return save_tokenizer(train_tokenizer(corpus, vocab_size=320), workdir / "tok.json")


def _model_dir(workdir: Path, tokenizer_path: Path, name: str, layers) -> Path:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()
    spec = ArchSpec("qwen2", hidden_size=128, head_dim=32, vocab_size=vocab, layers=tuple(layers))
    model = build_model(spec, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(WEIGHT_SCALE)
    return save_model(model, workdir / name, tokenizer_json=tokenizer_path)


@pytest.fixture(scope="module")
def models(workdir, tokenizer_path) -> dict[str, Path]:
    return {"dense": _model_dir(workdir, tokenizer_path, "dense", DENSE_LAYERS),
            "pruned": _model_dir(workdir, tokenizer_path, "pruned", PRUNED_LAYERS)}


@pytest.fixture(scope="module")
def fp32_files(models, workdir) -> dict[str, Path]:
    return {name: export_onnx(d, workdir / f"{name}.onnx") for name, d in models.items()}


@pytest.fixture(scope="module")
def variants(models, fp32_files, workdir) -> dict[tuple[str, str], Path]:
    """(model, variant) -> file, for every model and fp32 / fp16 / int8 / int8-dynamic / int4 ("int8"
    is the default int8 method, weight-only)."""
    out = {}
    for name, d in models.items():
        out[name, "fp32"] = fp32_files[name]
        out[name, "fp16"] = export_onnx(d, workdir / f"{name}-fp16.onnx", dtype="fp16")
        for kind in QUANTIZATIONS:
            path = workdir / f"{name}-{kind}.onnx"
            quantize_onnx(fp32_files[name], path, kind)
            out[name, kind] = path
        out[name, "int8-dynamic"] = workdir / f"{name}-int8-dynamic.onnx"
        quantize_onnx(fp32_files[name], out[name, "int8-dynamic"], QuantizeConfig("int8", int8_method="dynamic"))
    return out


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


# ---------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("model", ["dense", "pruned"])
@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8", "int8-dynamic", "int4"])
def test_parity_per_variant(models, variants, model, variant):
    report = check_parity(models[model], variants[model, variant], PROMPTS, BUDGET)
    kind = variant.split("-")[0]  # both int8 methods share the int8 tolerance row
    tol = TOLERANCES[kind]
    assert report.variant == kind
    assert all(d["logits_ok"] for d in report.details), report.summary()
    if tol.max_mean_kl is None:  # float graphs: max |logit diff| bound
        assert report.max_abs_logit_diff <= report.logit_tolerance
    else:  # quantized: mean KL at the answer steps (the max |logit diff| is only reported)
        assert 0.0 < report.mean_kl <= tol.max_mean_kl, report.summary()
        assert "mean KL" in report.summary()
    assert 0.0 < report.token_agreement <= 1.0
    assert report.ok == (report.token_agreement >= tol.min_token_agreement), report.summary()
    # tied models: the float variants store the vocab x hidden table once (the LM head reads
    # Transpose(embedding)); the MatMulNBits ones store it once quantized (the Gather reads the LM
    # head's 4/8-bit weight); dynamic int8 quantizes the head and keeps a float table for the Gather
    graph = onnx.load(str(variants[model, variant])).graph
    transposed_table = any(n.op_type == "Transpose" and n.input[0] in {g.input[0] for g in graph.node
                                                                        if g.op_type == "Gather"} for n in graph.node)
    if variant in ("fp32", "fp16"):
        assert vocab_tables(variants[model, variant]) == 1 and transposed_table
    else:
        assert not transposed_table
    if variant in ("int8", "int4"):
        assert vocab_tables(variants[model, variant]) == 0  # no float table at all
        gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
        assert gather.input[0] in {n.input[1] for n in graph.node if n.op_type == "MatMulNBits"}
    if variant == "fp32":
        assert report.ok and report.identical_answers == len(PROMPTS) and report.token_agreement == 1.0
        assert report.max_abs_logit_diff < 1e-3
    elif variant == "fp16":
        assert report.ok and report.identical_answers + report.near_ties == len(PROMPTS), report.summary()
    elif kind == "int8":
        assert report.ok, report.summary()
        assert report.max_abs_logit_diff > 1e-3  # really quantized: not the fp32 graph
    else:  # int4: the agreement floor is calibrated on the trained model; random models vary (docstring)
        assert report.token_agreement > 0.5, report.summary()
        assert report.max_abs_logit_diff > 1e-2  # really quantized


def test_greedy_divergence_does_not_fail_quantized_parity(models, variants):
    """Quantized parity reports identical answers; it does not require them (fp32 does)."""
    assert not TOLERANCES["int4"].require_identical and TOLERANCES["fp32"].require_identical
    report = check_parity(models["dense"], variants["dense", "int4"], PROMPTS, BUDGET)
    assert report.identical_answers < len(PROMPTS)  # at this weight scale int4 answers drift
    assert "identical greedy answers" in report.summary() and "token agreement" in report.summary()
    assert all("token_agreement" in d for d in report.details)


def test_a_broken_quantized_file_fails_the_kl_criterion(models, variants, tmp_path):
    """Exchange the MLP down-projection weights of the first and last layer of the int4 file (same
    shapes, so it loads and runs): the answer-step distributions move by far more than the int4
    KL bound, and parity says so."""
    from onnx import numpy_helper

    proto = onnx.load(str(variants["dense", "int4"]))
    inits = {i.name: i for i in proto.graph.initializer}
    down = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "MatMulNBits"  # K = MLP width, N = hidden
            and {a.name: a.i for a in n.attribute}.get("K") == DENSE_LAYERS[0].intermediate_size]
    assert len(down) == len(DENSE_LAYERS)
    first, last = numpy_helper.to_array(down[0]).copy(), numpy_helper.to_array(down[-1]).copy()
    down[0].CopyFrom(numpy_helper.from_array(last, down[0].name))
    down[-1].CopyFrom(numpy_helper.from_array(first, down[-1].name))
    broken = tmp_path / "broken-int4.onnx"
    onnx.save(proto, str(broken))
    good = check_parity(models["dense"], variants["dense", "int4"], PROMPTS, BUDGET)
    bad = check_parity(models["dense"], broken, PROMPTS, BUDGET)
    assert not bad.ok and "mean KL" in bad.message, bad.summary()
    assert bad.mean_kl > TOLERANCES["int4"].max_mean_kl > good.mean_kl


def _fake_choices(monkeypatch, reference, file):
    """Make ``answer_choice`` say ``reference`` of each reference answer and ``file`` of each file
    answer: random tiny models write nothing parseable, and parity calls it in that order."""
    from edge_runtime.tasks import answers

    calls = []

    def choice(text):
        calls.append(text)
        return reference if len(calls) % 2 else file

    monkeypatch.setattr(answers, "answer_choice", choice)
    return calls


def test_a_file_whose_answers_choose_other_parameters_fails_parity(models, variants, monkeypatch):
    """The 4-bit failure this gate exists for: the file writes a_max where its weights write a_min
    -- one token per answer, so the mean KL and the token agreement barely move -- and every
    answer of that category is lost. Parity must fail and name what was chosen."""
    clean = check_parity(models["dense"], variants["dense", "int8"], PROMPTS, BUDGET)
    assert clean.ok and clean.answer_prompts == 0, clean.summary()  # nothing parses: no choice to compare
    calls = _fake_choices(monkeypatch, ("a_min", "v_max", "v_min"), ("a_max", "v_max"))
    report = check_parity(models["dense"], variants["dense", "int8"], PROMPTS, BUDGET)
    assert len(calls) == 2 * len(PROMPTS)
    assert not report.ok and report.answer_prompts == len(PROMPTS) and report.answer_agreement == 0.0
    assert "prompt 0 answers {a_max, v_max} where the weights answer {a_min, v_max, v_min}" in report.message
    assert f"same answer choice 0/{len(PROMPTS)}" in report.summary()
    assert all(d["same_choice"] is False and d["file_choice"] == ["a_max", "v_max"] for d in report.details)
    assert report.token_agreement == clean.token_agreement and report.mean_kl == clean.mean_kl  # the other criteria pass


def test_the_same_choice_passes_and_unparsed_references_are_not_counted(models, variants, monkeypatch):
    _fake_choices(monkeypatch, True, True)
    same = check_parity(models["dense"], variants["dense", "int8"], PROMPTS, BUDGET)
    assert same.ok and same.answer_agreement == 1.0 and same.answer_prompts == len(PROMPTS), same.summary()
    _fake_choices(monkeypatch, None, ("v_max",))  # the weights' answers do not parse: nothing to hold the file to
    unparsed = check_parity(models["dense"], variants["dense", "int8"], PROMPTS, BUDGET)
    assert unparsed.ok and unparsed.answer_prompts == 0 and "same answer choice" not in unparsed.summary()
    assert all(d["same_choice"] is None for d in unparsed.details)


def test_answer_choice_floors_sit_on_the_quantized_rows_only():
    assert TOLERANCES["fp32"].min_answer_agreement is None and TOLERANCES["fp16"].min_answer_agreement is None
    assert 0.0 < TOLERANCES["int4"].min_answer_agreement <= TOLERANCES["int8"].min_answer_agreement < 1.0


def test_mean_kl_on_known_distributions():
    from edge_runtime.export.parity import mean_kl

    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]))
    assert mean_kl(logits, logits + 3.0) == pytest.approx(0.0, abs=1e-12)  # a shift changes nothing
    other = np.log(np.array([[0.25, 0.5, 0.25], [0.9, 0.05, 0.05]]))
    want = (0.5 * np.log(2) + 0.25 * np.log(0.5)) / 2  # row 1 only, averaged over the two rows
    assert mean_kl(logits, other) == pytest.approx(want, rel=1e-9)


def test_tolerance_table_covers_every_variant():
    assert set(TOLERANCES) == {"fp32", "fp16", *QUANTIZATIONS}
    assert TOLERANCES["int4"].atol >= TOLERANCES["int8"].atol > TOLERANCES["fp16"].atol > TOLERANCES["fp32"].atol


# ------------------------------------------------------------------------ metadata / runtime
@pytest.mark.parametrize("variant, method, op", [("int8", "matmul_nbits", "MatMulNBits"),
                                                  ("int8-dynamic", "dynamic", "MatMulInteger"),
                                                  ("int4", "matmul_nbits", "MatMulNBits")])
def test_quantized_file_is_self_describing_and_runs(variants, variant, method, op):
    kind = variant.split("-")[0]
    for model in ("dense", "pruned"):
        fp32, quant = variants[model, "fp32"], variants[model, variant]
        meta32, meta = _metadata(fp32), _metadata(quant)
        for key in META_KEYS:
            assert meta[key] == meta32[key], key
        record = json.loads(meta[QUANTIZATION_KEY])
        assert record["kind"] == kind and record["method"] == method and record["bits"] == (8 if kind == "int8" else 4)
        float_graph = onnx.load(str(fp32))
        unshare_tied_table(float_graph)  # the quantizer gives a tied LM head its own weight first
        assert record["quantized_matmuls"] == len(weight_matmuls(float_graph))
        assert record["onnxruntime"] == ort.__version__
        assert quantization_of(meta) == record and quantization_of(meta32) is None
        assert parity_variant(meta) == kind and parity_variant(meta32) == "fp32"
        ops = {n.op_type for n in onnx.load(str(quant)).graph.node}
        assert op in ops and not ({"MatMulInteger", "MatMulNBits"} - {op}) & ops
        gen = OnnxGenerator(quant, threads=1)
        assert gen.dtype == "fp32" and gen.spec.is_uniform == (model == "dense")
        result = gen.generate(PROMPTS[0], 6)
        assert 1 <= result.emitted_tokens <= 6
    # weights: 4 bytes -> ~1 (int8) / ~0.5 (int4) plus scales; the float embedding stays
    sizes = {v: variants["dense", v].stat().st_size for v in ("fp32", "fp16", "int8", "int8-dynamic", "int4")}
    assert sizes["int4"] < sizes["int8"] < sizes["fp16"] < sizes["fp32"]
    assert sizes["int4"] < sizes["int8-dynamic"] < sizes["fp16"]
    assert max(sizes["int8"], sizes["int8-dynamic"]) < 0.5 * sizes["fp32"]


def test_int8_default_method_is_weight_only_in_library_and_cli():
    """One source of truth: QuantizeConfig's default int8 method is edge-export's default, and it is
    weight-only, the method that passes parity on every shipped model (bench/results/quantization.md)."""
    args = cli.build_parser().parse_args(["models/dense", "-o", "x.onnx", "--quantize", "int8"])
    assert QuantizeConfig("int8").int8_method == args.int8_method == DEFAULT_INT8_METHOD == "weight-only"
    assert QuantizeConfig("int8").method == "matmul_nbits"
    assert QuantizeConfig("int8", int8_method="dynamic").method == "dynamic"


def test_quantized_embedding_is_the_default_and_can_be_turned_off(variants, fp32_files, workdir):
    """The table stored once, quantized (MatMulNBits default) vs the float Gather kept: the file
    shrinks by about the float table, the metadata says which, and both files run."""
    meta = json.loads(_metadata(variants["dense", "int4"])[QUANTIZATION_KEY])
    assert meta["embedding"] == "4-bit GatherBlockQuantized, shared with the LM head"
    report = quantize_onnx(fp32_files["dense"], workdir / "dense-int4-float-embedding.onnx",
                           QuantizeConfig("int4", quantize_embedding=False))
    assert report.embeddings == [] and report.metadata["embedding"] == "float32"
    assert vocab_tables(workdir / "dense-int4-float-embedding.onnx") == 1
    spec = OnnxGenerator(variants["dense", "int4"], threads=1).spec
    float_table = 4 * spec.vocab_size * spec.hidden_size
    saved = (workdir / "dense-int4-float-embedding.onnx").stat().st_size - variants["dense", "int4"].stat().st_size
    assert 0.7 * float_table < saved < float_table  # minus the scales stored again for the Gather
    dynamic = json.loads(_metadata(variants["dense", "int8-dynamic"])[QUANTIZATION_KEY])
    assert dynamic["embedding"] == "float32"
    for path in (workdir / "dense-int4-float-embedding.onnx", variants["dense", "int4"]):
        assert OnnxGenerator(path, threads=1).generate(PROMPTS[0], 4).emitted_tokens >= 1


def test_int4_with_an_8_bit_head(models, variants, fp32_files, workdir):
    """--head-bits 8: the projections are 4-bit, the LM head and the tied embedding table it shares
    are 8-bit; the file runs and passes int4 parity."""
    out = workdir / "dense-int4-h8.onnx"
    report = quantize_onnx(fp32_files["dense"], out, QuantizeConfig("int4", head_bits=8))
    graph = onnx.load(str(out)).graph
    bits = {n.output[0]: {a.name: a.i for a in n.attribute}["bits"] for n in graph.node if n.op_type == "MatMulNBits"}
    assert bits.pop("logits") == 8 and set(bits.values()) == {4}
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    assert {a.name: a.i for a in gather.attribute}["bits"] == 8
    assert report.metadata["head_bits"] == 8 and report.metadata["embedding"].startswith("8-bit")
    parity = check_parity(models["dense"], out, PROMPTS, BUDGET)
    assert parity.variant == "int4" and all(d["logits_ok"] for d in parity.details), parity.summary()
    assert variants["dense", "int4"].stat().st_size < out.stat().st_size < variants["dense", "int8"].stat().st_size


def test_int4_fine_block_layers_get_the_small_blocks_and_only_they(models, fp32_files, workdir):
    """fine_block_layers: those layers' projections in blocks of 16, every other one (and the head)
    in blocks of 32; the record says so; it passes int4 parity."""
    from edge_runtime.export.quantize import layer_of

    out = workdir / "dense-int4-fine.onnx"
    report = quantize_onnx(fp32_files["dense"], out, QuantizeConfig("int4", block_size=32, fine_block_layers=(1, 1)))
    graph = onnx.load(str(out)).graph
    sizes = {n.name: {a.name: a.i for a in n.attribute}["block_size"] for n in graph.node if n.op_type == "MatMulNBits"}
    assert sorted(name for name, size in sizes.items() if size == 16) == sorted(
        name for name in sizes if layer_of(name) == 1) and len(sizes) > 4
    head = next(n.name for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] == "logits")
    assert sizes[head] == 32 and layer_of(head) is None
    assert report.metadata["fine_block_layers"] == [1] and report.metadata["fine_block_size"] == 16
    assert len(report.quantized) == len(sizes)
    parity = check_parity(models["dense"], out, PROMPTS, BUDGET)
    assert parity.variant == "int4" and all(d["logits_ok"] for d in parity.details), parity.summary()


def test_layer_of_reads_both_graph_namings():
    from edge_runtime.export.quantize import layer_of

    assert layer_of("l12.qkv_nb/MatMul") == 12 and layer_of("/model/layers.3/mlp/down_proj/MatMul") == 3
    assert layer_of("logits/MatMul") is None and layer_of("lm_head/MatMul") is None


def test_int4_pads_a_k_that_is_not_a_block_multiple(fp32_files, workdir):
    report = quantize_onnx(fp32_files["pruned"], workdir / "pruned-int4-again.onnx", QuantizeConfig("int4"))
    assert [(k, padded) for _, k, padded in report.padded] == [(200, 224)]
    assert "padded" in report.summary()
    none = quantize_onnx(fp32_files["dense"], workdir / "dense-int4-again.onnx", "int4")
    assert none.padded == [] and none.ratio < 0.5


def test_matmulnbits_padding_is_numerically_right():
    """One MatMul with K = 200 (not a multiple of 32) and K = 8 (< one block) through MatMulNBits:
    the result is within 4-bit rounding error of the float product."""
    from onnx import TensorProto, helper, numpy_helper

    from edge_runtime.export.quantize import _quiet, _run_nbits

    rng = np.random.default_rng(0)
    for k in (200, 8):
        w = rng.standard_normal((k, 48)).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 48])], [numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        import tempfile

        with tempfile.TemporaryDirectory() as td, _quiet():
            _run_nbits(model, Path(td) / "q.onnx", QuantizeConfig("int4"), ["mm"])
            sess = ort.InferenceSession(str(Path(td) / "q.onnx"), providers=["CPUExecutionProvider"])
            x = rng.standard_normal((3, k)).astype(np.float32)
            y = sess.run(None, {"x": x})[0]
        ref = x @ w
        assert np.abs(y - ref).max() < 0.15 * np.abs(ref).max()


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, needle", [
    ({"kind": "int5"}, "unknown quantization"),
    ({"kind": "int4", "block_size": 24}, "block_size"),
    ({"kind": "int8", "int8_method": "static"}, "int8 method"),
    ({"kind": "int4", "accuracy_level": 7}, "accuracy_level"),
    ({"kind": "int4", "head_bits": 3}, "head_bits"),
    ({"kind": "int8", "int8_method": "dynamic", "head_bits": 8}, "head_bits"),
    ({"kind": "int4", "fine_block_layers": (-1,)}, "layer indices"),
    ({"kind": "int4", "fine_block_layers": (0,), "fine_block_size": 32}, "smaller than block_size"),
    ({"kind": "int8", "int8_method": "dynamic", "fine_block_layers": (0,)}, "MatMulNBits"),
])
def test_config_errors(kwargs, needle):
    with pytest.raises(QuantizeError, match=needle):
        QuantizeConfig(**kwargs)


def test_quantize_errors(variants, workdir, tmp_path):
    with pytest.raises(QuantizeError, match="not found"):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "q.onnx", "int8")
    with pytest.raises(QuantizeError, match="fp32"):
        quantize_onnx(variants["dense", "fp16"], tmp_path / "q.onnx", "int8")
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_onnx(variants["dense", "int8"], tmp_path / "q.onnx", "int4")
    bare = onnx.load(str(variants["dense", "fp32"]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(QuantizeError, match="not an edge_runtime export"):
        quantize_onnx(tmp_path / "bare.onnx", tmp_path / "q.onnx", "int8")
    with pytest.raises(QuantizeError, match=r"\[7\] are not layers of this model"):
        quantize_onnx(variants["dense", "fp32"], tmp_path / "q.onnx", QuantizeConfig("int4", fine_block_layers=(0, 7)))
    with pytest.raises(QuantizeError, match="no known 'kind'"):
        quantization_of({QUANTIZATION_KEY: json.dumps({"kind": "int3"})})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.onnx"]  # nothing half-written


# ------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("args", [["--quantize", "int8"], ["--quantize", "int4", "--block-size", "16"],
                                  ["--quantize", "int4", "--accuracy-level", "0", "--float-embedding"]])
def test_cli_quantize_end_to_end(models, tmp_path, capsys, args):
    out = tmp_path / "q.onnx"
    rc = cli.main([str(models["pruned"]), "-o", str(out), *args, "--parity-prompts", "1",
                   "--decision-prompts", "1", "--max-new-tokens", "8"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "quantized" in printed and "token agreement" in printed and "edge-eval --model" in printed
    assert "mean KL" in printed and "reported, not a criterion" in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]  # no temp files left
    record = quantization_of(_metadata(out))
    assert record["kind"] == args[1]
    if "--block-size" in args:
        assert record["block_size"] == 16
    assert record["accuracy_level"] == (0 if "--accuracy-level" in args else 4)  # 4 (int8 compute) by default
    assert record["embedding"] == ("float32" if "--float-embedding" in args
                                   else f"{record['bits']}-bit GatherBlockQuantized, shared with the LM head")


def test_cli_refuses_a_file_whose_answers_choose_otherwise(models, tmp_path, capsys, monkeypatch):
    common = [str(models["pruned"]), "--quantize", "int8", "--parity-prompts", "2", "--decision-prompts", "0",
              "--max-new-tokens", "8"]
    _fake_choices(monkeypatch, ("v_max",), ("v_max",))
    assert cli.main([*common, "-o", str(tmp_path / "same.onnx")]) == 0
    assert "answer choice      2/2 prompts set the reference's parameters / verdict (floor 0.9)" in capsys.readouterr().out
    _fake_choices(monkeypatch, ("a_min", "v_min"), ("a_max",))
    assert cli.main([*common, "-o", str(tmp_path / "flipped.onnx")]) == 1
    captured = capsys.readouterr()
    assert "answer choice      0/2" in captured.out
    assert "parity FAILED" in captured.err and "answers {a_max} where the weights answer {a_min, v_min}" in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.onnx"]  # the refused file was not written


@pytest.mark.parametrize("args, needle", [
    (["--quantize", "int3"], "--quantize"),
    (["--quantize", "int8", "--dtype", "fp16"], "fp32"),
    (["--quantize", "int4", "--block-size", "24"], "--block-size"),
    (["--quantize", "int8", "--int8-method", "static"], "--int8-method"),
    (["--quantize", "int4", "--accuracy-level", "5"], "--accuracy-level"),
    (["--quantize", "int4", "--head-bits", "2"], "--head-bits"),
    (["--quantize", "int8", "--int8-method", "dynamic", "--head-bits", "8"], "head_bits"),
    (["--quantize", "int4", "--fine-block-layers", "0,x"], "--fine-block-layers"),
    (["--fine-block-layers", "0"], "--quantize option"),
    (["--quantize", "int4", "--fine-block-size", "24"], "--fine-block-size"),
])
def test_cli_quantize_bad_input_exit_2(models, tmp_path, capsys, args, needle):
    rc = cli.main([str(models["dense"]), "-o", str(tmp_path / "m.onnx"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())
