"""Last-position logits (edge-export --logits last): the rewritten graph decodes exactly as the
full one, its weights are the same bytes, parity checks it, and bad input is one line (exit 2)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edge_runtime.decoding.generator import OnnxGenerator
from edge_runtime.export import cli
from edge_runtime.export.errors import ExportError
from edge_runtime.export.external_data import externalize_weights
from edge_runtime.export.last_logits import is_last_only, keep_last_logits, main, rewrite_file
from edge_runtime.export.onnx_export import export_onnx
from edge_runtime.export.parity import check_parity
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.tasks.prompts import build_mpc_prompt
from onnx_fixtures import build_tiny_model_dir

torch.set_num_threads(1)


def prompts(n: int) -> list[str]:
    return [build_mpc_prompt(i.text) for i in instruction_set("validation")[2::5][:n]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("last"), seed=5, weight_scale=6.0, vocab_size=320)


@pytest.fixture(scope="module", params=["shared", "concat"])
def pair(request, model_dir) -> tuple[Path, Path]:
    """(the full graph, its last-position rewrite) of each KV-cache layout."""
    kv = dict(kv_cache="shared", capacity=512) if request.param == "shared" else dict(kv_cache="concat")
    full = export_onnx(model_dir, model_dir.parent / f"full-{request.param}.onnx", **kv)
    return full, rewrite_file(full, model_dir.parent / f"last-{request.param}.onnx")


def test_rewrite_keeps_every_weight_and_declares_one_row(pair):
    full, last = (onnx.load(str(p)) for p in pair)
    assert not is_last_only(full) and is_last_only(last)
    before = {t.name: t.raw_data or t.SerializeToString() for t in full.graph.initializer}
    after = {t.name: t.raw_data or t.SerializeToString() for t in last.graph.initializer}
    assert {k: v for k, v in after.items() if not k.startswith("logits.last.")} == before
    assert len(last.graph.node) == len(full.graph.node) + 1
    assert [n.op_type for n in last.graph.node if "logits" in n.output] == \
           [n.op_type for n in full.graph.node if "logits" in n.output]
    assert dict((p.key, p.value) for p in last.metadata_props) == dict((p.key, p.value) for p in full.metadata_props)


def test_last_row_equals_the_full_graphs_and_greedy_answers_are_identical(pair):
    full, last = OnnxGenerator(pair[0], threads=1), OnnxGenerator(pair[1], threads=1)
    assert not full.last_logits_only and last.last_logits_only
    for prompt in prompts(3):
        ids = full.encode(prompt)
        a, b = full.start(), last.start()
        ra, rb = a.append_tokens(ids), b.append_tokens(ids)
        assert ra.shape == (len(ids), full.spec.vocab_size) and rb.shape == (1, full.spec.vocab_size)
        np.testing.assert_allclose(rb[0], ra[-1], atol=1e-4, rtol=0)
        more = [int(np.argmax(ra[-1])), 7, 11]  # a multi-token run after a past: its last row again
        np.testing.assert_allclose(b.append_tokens(more)[-1], a.append_tokens(more)[-1], atol=1e-4, rtol=0)
        assert b.length == a.length == len(ids) + 3
        one = b.append_tokens([5])  # one-token runs after a multi-token one: a row of its own each time
        assert one.shape == (1, full.spec.vocab_size)
        np.testing.assert_allclose(one, a.append_tokens([5]), atol=1e-4, rtol=0)
        assert full.generate(prompt, 24).token_ids == last.generate(prompt, 24).token_ids
        con_a = full.generate(prompt, 40, constrained=True, task="mpc")
        con_b = last.generate(prompt, 40, constrained=True, task="mpc")
        assert con_a.token_ids == con_b.token_ids and con_a.forward_passes == con_b.forward_passes


def test_prefix_cache_on_a_last_position_file(pair):
    """The prompt-prefix cache copies cached positions and runs the rest: the same answers."""
    gen, ref = OnnxGenerator(pair[1], threads=1), OnnxGenerator(pair[0], threads=1)
    ps = prompts(3)
    gen.cache_common_prefix(ps)
    for p in ps:
        assert gen.generate(p, 20).token_ids == ref.generate(p, 20).token_ids
    assert gen.prefix_stats["full"] + gen.prefix_stats["partial"] == len(ps)


def test_prefill_logits_of_several_tokens_is_refused_in_one_line(pair):
    gen = OnnxGenerator(pair[1], threads=1)
    assert gen.prefill_logits([3]).shape == (1, gen.spec.vocab_size)
    with pytest.raises(ValueError, match="last position only") as info:
        gen.prefill_logits([3, 4, 5])
    assert "\n" not in str(info.value)


def test_parity_checks_a_last_position_file_like_the_full_one(model_dir, pair):
    ps = prompts(2)
    full, last = (check_parity(model_dir, p, ps, 16, threads=1) for p in pair)
    assert full.ok and last.ok, (full.message, last.message)
    assert last.identical_answers == full.identical_answers == 2
    assert last.token_agreement == full.token_agreement
    assert last.max_abs_logit_diff <= 1e-3  # the prompt's last row against PyTorch's
    assert abs(last.mean_kl - full.mean_kl) < 1e-6


def test_parity_catches_a_broken_head_in_a_last_position_file(model_dir, pair, tmp_path):
    """A rewrite that fed the head the wrong position would still run: parity must see it."""
    model = onnx.load(str(pair[1]))
    start = next(t for t in model.graph.initializer if t.name == "logits.last.start")
    start.CopyFrom(onnx.numpy_helper.from_array(np.array([0], dtype=np.int64), start.name))  # [0:] -> every row
    end = next(t for t in model.graph.initializer if t.name == "logits.last.end")
    end.CopyFrom(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), end.name))  # [0:1]: the FIRST row
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    report = check_parity(model_dir, broken, prompts(1), 8, threads=1)
    assert not report.ok


def test_cli_default_writes_last_position_logits_and_all_keeps_every_row(model_dir, tmp_path, capsys):
    common = ["--parity-prompts", "1", "--decision-prompts", "1", "--max-new-tokens", "8"]
    assert cli.main([str(model_dir), "-o", str(tmp_path / "a.onnx"), *common]) == 0
    assert "last-position logits" in capsys.readouterr().out
    assert cli.main([str(model_dir), "-o", str(tmp_path / "b.onnx"), "--logits", "all", *common]) == 0
    assert "every position" in capsys.readouterr().out
    assert is_last_only(onnx.load(str(tmp_path / "a.onnx")))
    assert not is_last_only(onnx.load(str(tmp_path / "b.onnx")))
    assert cli.main([str(model_dir), "-o", str(tmp_path / "c.onnx"), "--quantize", "int8", *common]) == 0
    assert OnnxGenerator(tmp_path / "c.onnx").last_logits_only
    assert cli.main([str(model_dir), "-o", str(tmp_path / "d.onnx"), "--logits", "none"]) == 2
    assert "--logits" in capsys.readouterr().err


def test_external_data_file_is_rewritten_beside_its_data(pair, tmp_path):
    ext = tmp_path / "ext" / "m.onnx"
    ext.parent.mkdir()
    externalize_weights(pair[0], ext)
    data = ext.with_name("m.onnx.data").read_bytes()
    rewrite_file(ext, ext)  # in place
    assert OnnxGenerator(ext).last_logits_only
    assert ext.with_name("m.onnx.data").read_bytes() == data
    assert sorted(p.name for p in ext.parent.iterdir()) == ["m.onnx", "m.onnx.data"]  # no temp file left
    with pytest.raises(ExportError, match="not beside"):
        rewrite_file(ext, tmp_path / "elsewhere" / "m.onnx")


def test_module_cli_bad_input_exit_2_in_one_line(pair, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.onnx")], "not found"),
        ([str(pair[1]), "-o", str(tmp_path / "x.onnx")], "already computes"),
        ([str(pair[0]), "-o", str(tmp_path / "x.txt")], "must end in .onnx"),
        ([str(pair[0])], "required"),
    ]
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x01garbage" * 10)
    cases.append(([str(junk), "-o", str(tmp_path / "x.onnx")], "junk.onnx"))
    for argv, needle in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1 and err.startswith("last_logits: error:"), err
    assert not (tmp_path / "x.onnx").exists()
    assert main([str(pair[0]), "-o", str(tmp_path / "ok.onnx")]) == 0


def test_a_graph_without_logits_is_refused():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    with pytest.raises(ExportError, match="no 'logits' output"):
        keep_last_logits(helper.make_model(g))
