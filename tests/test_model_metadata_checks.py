"""Issue 15 item 7: an exported file's metadata is checked against its graph at load, and a token
budget or an instruction that cannot fit the KV cache is refused before edge-run starts.

A file whose arch spec says other query heads, vocab, layers, KV heads, MLP widths or hidden size
than its graph is a ModelLoadError (one line: file and field) in the generator and exit 2 in
edge-run and edge-eval; edge-eval's parameter count is the graph's. The protobuf reader behind the
check agrees with the ``onnx`` package on every initialiser and attribute it reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx_fixtures import build_tiny_model_dir, vocab_tables, with_metadata

from edge_runtime.decoding.generator import OnnxGenerator, OnnxPolicy
from edge_runtime.decoding.model_file import ModelLoadError
from edge_runtime.decoding.onnx_graph import read_graph_facts
from edge_runtime.evaluation.cli import main as edge_eval
from edge_runtime.export.onnx_export import export_onnx
from edge_runtime.export.quantize import QuantizeConfig, quantize_onnx
from edge_runtime.runtime.cli import main as edge_run
from edge_runtime.runtime.llm_worker import LLMWorker, PromptDoesNotFit
from edge_runtime.runtime.scenario import single_instruction

torch.set_num_threads(1)
SPEC = "edge_runtime.arch_spec"
#: Classified as a reference-velocity instruction, but its MPC prompt takes more than 1024 - 199 tokens
#: of the tiny tokenizer.
LONG_INSTRUCTION = "Drive at 2 m/s " + "please, really carefully and precisely " * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny non-uniform qwen2 of the generator tests (layer 1: 2 query heads, 1 KV head, MLP 192)."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("meta"))


@pytest.fixture(scope="module")
def files(model_dir) -> dict[str, Path]:
    root = model_dir.parent
    return {"concat": export_onnx(model_dir, root / "concat.onnx"),
            "shared": export_onnx(model_dir, root / "shared.onnx", kv_cache="shared", capacity=1024),
            "shared512": export_onnx(model_dir, root / "shared512.onnx", kv_cache="shared", capacity=512)}


def tampered(src: Path, dst: Path, change) -> Path:
    def edit(props: dict[str, str]) -> None:
        spec = json.loads(props[SPEC])
        change(spec)
        props[SPEC] = json.dumps(spec)
    return with_metadata(src, dst, edit)


def one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and "re-export" in msg, msg
    for needle in needles:
        assert needle in msg, msg


# What each tamper changes and what the error says. The first five loaded (and ran) before the check.
TAMPERS = {
    "query_heads": (lambda s: s["layers"][1].update(num_q_heads=4), ["query heads"]),
    "vocab": (lambda s: s.update(vocab_size=400), ["vocab_size 400", "logits have 320"]),
    "dropped_layer": (lambda s: s["layers"].pop(), ["says 3 layers", "4 past_key_values inputs"]),
    "mlp_width": (lambda s: s["layers"][2].update(intermediate_size=256), ["weight matrices", "MLP widths", "256x128"]),
    "hidden_size": (lambda s: s.update(hidden_size=256), ["hidden_size 256", "embedding table is 320x128"]),
    "extra_layer": (lambda s: s["layers"].append(dict(s["layers"][0])), ["says 5 layers"]),
    "kv_heads": (lambda s: s["layers"][1].update(num_kv_heads=2, num_q_heads=2), ["past_key_values.1.key"]),
}


@pytest.mark.parametrize("layout", ["concat", "shared"])
@pytest.mark.parametrize("what", list(TAMPERS))
def test_metadata_that_does_not_describe_the_graph_is_refused(files, tmp_path, layout, what):
    change, needles = TAMPERS[what]
    path = tampered(files[layout], tmp_path / f"{what}.onnx", change)
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(path)
    one_line(exc, str(path), "arch", *needles)


def test_query_heads_of_the_shared_graph_are_read_from_its_attention(files, tmp_path):
    path = tampered(files["shared"], tmp_path / "q0.onnx", lambda s: s["layers"][0].update(num_q_heads=2))
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(path)
    one_line(exc, "layer 0 has 2 query heads but the graph's attention has 4")


def test_a_shared_graph_labelled_concat_is_refused(files, tmp_path):
    path = with_metadata(files["shared"], tmp_path / "relabelled.onnx", lambda p: p.pop("edge_runtime.kv_cache"))
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(path)
    one_line(exc, "past_key_values.0.key", "past_seq")


def test_quantized_files_pass_and_their_tampered_metadata_does_not(files, tmp_path):
    for layout, config in (("concat", QuantizeConfig("int8", int8_method="dynamic")),
                           ("shared", QuantizeConfig("int4"))):
        out = tmp_path / f"{layout}-q.onnx"
        quantize_onnx(files[layout], out, config)
        OnnxGenerator(out)  # the true metadata passes: MatMulInteger / MatMulNBits weights are read
        bad = tampered(out, tmp_path / f"{layout}-q-mlp.onnx", TAMPERS["mlp_width"][0])
        with pytest.raises(ModelLoadError) as exc:
            OnnxGenerator(bad)
        one_line(exc, "weight matrices")


def _with_own_head_matrix(src: Path, dst: Path) -> Path:
    """``src`` as exported before a tied table was stored once: the LM head has its own matrix."""
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    inits = {i.name: i for i in proto.graph.initializer}
    (transpose,) = [n for n in proto.graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    table = numpy_helper.to_array(inits[transpose.input[0]])
    proto.graph.initializer.append(numpy_helper.from_array(table.T.copy(), transpose.output[0]))
    proto.graph.node.remove(transpose)
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize("layout", ["concat", "shared"])
def test_a_tied_spec_accepts_either_lm_head_layout_and_an_untied_spec_needs_its_own(files, tmp_path, layout):
    assert OnnxGenerator(files[layout]).spec.tie_word_embeddings
    assert vocab_tables(files[layout]) == 1
    own = _with_own_head_matrix(files[layout], tmp_path / "own.onnx")
    assert vocab_tables(own) == 2
    OnnxGenerator(own)  # tied, the LM head as its own matrix (older exports): accepted
    OnnxGenerator(tampered(own, tmp_path / "own-untied.onnx", lambda s: s.update(tie_word_embeddings=False)))
    bad = tampered(files[layout], tmp_path / "untied.onnx", lambda s: s.update(tie_word_embeddings=False))
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(bad)
    one_line(exc, str(bad), "tie_word_embeddings false", "reads the embedding table")


def test_graph_reader_agrees_with_onnx(files):
    for path in files.values():
        facts = read_graph_facts(path)
        proto = onnx.load(str(path))
        assert {t.name: (t.data_type, tuple(t.dims)) for t in proto.graph.initializer} == {
            n: (t.data_type, t.dims) for n, t in facts.initializers.items() if not n.startswith("/")
            and n in {i.name for i in proto.graph.initializer}}
        assert len(facts.nodes) == len(proto.graph.node)
        for mine, ref in zip(facts.nodes, proto.graph.node):
            assert (mine.op_type, mine.inputs, mine.outputs) == (ref.op_type, tuple(ref.input), tuple(ref.output))
            assert mine.ints == {a.name: a.i for a in ref.attribute if a.type == onnx.AttributeProto.INT}


def test_parameter_count_is_the_graphs(files, model_dir, tmp_path, capsys):
    """edge-eval reports a count the graph backs; a file whose metadata claims another model is refused."""
    from edge_runtime.model.io import load_model

    model, _ = load_model(model_dir)
    true_count = sum(p.numel() for p in model.parameters())
    for layout in ("concat", "shared"):
        assert OnnxPolicy(files[layout]).parameter_count() == true_count
    bigger = tampered(files["concat"], tmp_path / "claims-more-heads.onnx",
                      lambda s: s["layers"][1].update(num_q_heads=4))
    capsys.readouterr()
    assert edge_eval(["--model", str(bigger), "--task", "mpc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edge-eval: error:") and "claims-more-heads.onnx" in err, err


def _edge_run_refuses(argv: list[str], out: Path, capsys, *needles: str) -> None:
    rc = edge_run(argv + ["--track", "oval", "--duration", "1", "--fast", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("edge-run: error:") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    assert not (out / "steps.jsonl").exists() and not (out / "summary.json").exists()


def test_edge_run_refuses_a_file_whose_metadata_lies(files, tmp_path, capsys):
    path = tampered(files["shared"], tmp_path / "lies.onnx", TAMPERS["dropped_layer"][0])
    _edge_run_refuses(["--model", str(path)], tmp_path / "run", capsys, "lies.onnx", "says 3 layers")


def test_edge_run_refuses_a_token_budget_that_never_fits(files, tmp_path, capsys):
    """Capacity 512: the MPC prompt takes ~380 tokens of the tiny tokenizer, plus 200 new tokens never fit.
    Before: the run went ahead and every call was a worker_error with prompt_tokens 0."""
    _edge_run_refuses(["--model", str(files["shared512"]), "--instruction", "Drive at 2 m/s."], tmp_path / "run",
                      capsys, "shared512.onnx", "max_new_tokens.mpc 200", "capacity 512", "--kv-capacity")


def test_edge_run_refuses_an_instruction_that_cannot_fit(files, tmp_path, capsys):
    _edge_run_refuses(["--model", str(files["shared"]), "--instruction", LONG_INSTRUCTION], tmp_path / "one",
                      capsys, "--instruction:", "capacity 1024", "shorten the instruction")
    script = tmp_path / "s.txt"
    script.write_text(f"0, Drive on the centre line.\n1, {LONG_INSTRUCTION}\n")
    _edge_run_refuses(["--model", str(files["shared"]), "--script", str(script)], tmp_path / "script",
                      capsys, f"{script}:2:", "capacity 1024")


def test_worker_fit_check(files):
    generator = OnnxGenerator(files["shared"])
    worker = LLMWorker(generator)
    worker.check_prompts_fit([("a", single_instruction("Drive at 2 m/s.").entries[0].instruction)])
    long = single_instruction(LONG_INSTRUCTION).entries[0].instruction
    with pytest.raises(PromptDoesNotFit, match="^here: the prompt of this instruction takes"):
        worker.check_prompts_fit([("here", long)])
    LLMWorker(OnnxGenerator(files["concat"])).check_prompts_fit([("here", long)])  # no capacity: nothing to check


def test_edge_eval_refuses_prompts_that_cannot_fit_before_generating(files, capsys, monkeypatch):
    """Before: the first prompt's ValueError escaped edge-eval as a traceback."""
    generated = []
    monkeypatch.setattr(OnnxGenerator, "generate", lambda self, *a, **k: generated.append(a))
    assert edge_eval(["--model", str(files["shared512"]), "--task", "mpc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edge-eval: error: shared512.onnx:") and "capacity 512" in err, err
    assert generated == []


@pytest.mark.parametrize("layout", ["concat", "shared"])
def test_a_quantized_embedding_is_checked_like_the_float_one(files, tmp_path, layout):
    """int4: the Gather reads the LM head's 4-bit weight (GatherBlockQuantized). The file loads;
    a spec with another hidden size or vocab, or an untied spec, is one line naming the file."""
    q = tmp_path / "int4.onnx"
    quantize_onnx(files[layout], q, QuantizeConfig("int4"))
    assert OnnxGenerator(q).spec.tie_word_embeddings
    bad = tampered(q, tmp_path / "untied.onnx", lambda s: s.update(tie_word_embeddings=False))
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(bad)
    one_line(exc, str(bad), "tie_word_embeddings false", "reads the LM head's weight")
    wide = tampered(q, tmp_path / "wide.onnx", lambda s: s.update(hidden_size=256))
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(wide)
    one_line(exc, str(wide), "hidden_size 256")
