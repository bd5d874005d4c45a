"""The generator's reused IOBinding and its prompt-prefix cache (issue 13): the same tokens and
logits as a plain ``session.run`` loop and as a full prefill, on both KV-cache layouts; logits a
caller keeps are not overwritten; prompts that do not start with a cached prefix fall back; a
prefix the shared cache cannot hold is refused; the LLM worker registers the MPC prompt's prefix."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from edge_runtime.decoding.generator import OnnxGenerator
from edge_runtime.decoding.step_api import KVCapacityError, common_prefix_length
from edge_runtime.export.onnx_export import export_onnx
from edge_runtime.runtime.llm_worker import PREFIX_PROBES, LLMWorker
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.tasks.prompts import build_mpc_prompt
from onnx_fixtures import build_tiny_model_dir

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
CAPACITY = 640
SHIPPED = REPO / "models" / "tiny" / "dense.onnx"


def instructions(n: int) -> list[str]:
    return [i.text for i in instruction_set("validation")[2::5][:n]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("reuse"), seed=3, weight_scale=6.0, vocab_size=320)


@pytest.fixture(scope="module")
def paths(model_dir) -> dict[str, Path]:
    return {"concat": export_onnx(model_dir, model_dir.parent / "concat.onnx"),
            "shared": export_onnx(model_dir, model_dir.parent / "shared.onnx", kv_cache="shared", capacity=CAPACITY)}


@pytest.fixture(scope="module", params=["concat", "shared", "shipped"])
def path(request, paths) -> Path:
    """A concat-layout and a shared-layout export of the tiny test model, and the shipped tiny dense file."""
    if request.param == "shipped":
        if not SHIPPED.is_file():
            pytest.skip("models/tiny/dense.onnx is not in this checkout")
        return SHIPPED
    return paths[request.param]


def plain_run_greedy(gen: OnnxGenerator, ids: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """The reference: greedy tokens and next-token logits from ``session.run`` with numpy inputs and
    the presents fed back as pasts (no IOBinding, nothing reused, everything allocated per step)."""
    cache = [np.zeros(shape, dtype=gen.kv_dtype) for (b, kv, p, hd) in gen.spec.kv_cache_shapes(1, 0)
             for shape in [(b, kv, gen.kv_capacity or p, hd)] * 2]
    out, rows, feed, start = [], [], list(ids), 0
    for _ in range(steps):
        n = len(feed)
        inputs = {"input_ids": np.array([feed], dtype=np.int64),
                  "attention_mask": np.ones((1, start + n), dtype=np.int64),
                  "position_ids": np.arange(start, start + n, dtype=np.int64)[None, :],
                  **dict(zip(gen._past_names, cache))}
        results = gen.session.run(["logits", *gen._present_names], inputs)
        cache, start = results[1:], start + n
        rows.append(results[0][0, -1])
        out.append(int(np.argmax(rows[-1])))
        feed = [out[-1]]
    return out, rows


# ------------------------------------------------------------------------------- binding reuse
def test_reused_binding_matches_a_plain_session_run(path):
    gen = OnnxGenerator(path, threads=1)
    ids = gen.encode(build_mpc_prompt(instructions(1)[0]))
    ref_tokens, ref_rows = plain_run_greedy(gen, ids, 10)
    state = gen.start()
    rows = [state.append_tokens(ids)[-1]]
    while len(rows) < 10:
        rows.append(state.append_tokens([int(np.argmax(rows[-1]))])[-1])
    assert [int(np.argmax(r)) for r in rows] == ref_tokens
    np.testing.assert_allclose(np.stack(rows), np.stack(ref_rows), atol=1e-5, rtol=0)
    result = gen.generate(build_mpc_prompt(instructions(1)[0]), 10, stop_at_eos=False)
    assert list(result.token_ids) == ref_tokens
    # several tokens per run, then one, then several again (the binding is re-sized each time)
    state.reset()
    a = state.append_tokens(ids[:4])
    b = state.append_tokens(ids[4:5])
    c = state.append_tokens(ids[5:])
    # (1e-4: a prompt split into runs sums in another order than one run, as in tests/test_generator.py)
    np.testing.assert_allclose(np.concatenate([a, b, c]), gen.start().append_tokens(ids), atol=1e-4, rtol=0)


def test_logits_a_caller_keeps_are_not_overwritten(path):
    gen = OnnxGenerator(path, threads=1)
    ids = gen.encode(build_mpc_prompt(instructions(1)[0]))
    state = gen.start()
    prefill = state.append_tokens(ids)
    kept_prefill = prefill.copy()
    first = state.append_tokens([5])
    kept_first = first.copy()
    second = state.append_tokens([9])
    third = state.append_tokens([11, 12])  # multi-token runs of the same length one after the other
    kept_third = third.copy()
    state.append_tokens([13, 14])
    state.append_tokens([3])
    np.testing.assert_array_equal(prefill, kept_prefill)
    np.testing.assert_array_equal(first, kept_first)
    np.testing.assert_array_equal(third, kept_third)
    assert not np.array_equal(first, second)  # different inputs, different logits: a real check
    assert not np.shares_memory(first, second) and not np.shares_memory(prefill, third)


# ----------------------------------------------------------------------------- prefix cache
def test_prefix_cache_gives_the_same_tokens_and_logits(path):
    plain, cached = OnnxGenerator(path, threads=1), OnnxGenerator(path, threads=1)
    entry = cached.cache_common_prefix([build_mpc_prompt(t) for t in PREFIX_PROBES])
    assert entry is not None and len(entry) > 20  # role + parameter table: most of the prompt
    for text in instructions(3):
        prompt = build_mpc_prompt(text)
        ids = cached.encode(prompt)
        assert tuple(ids[:len(entry)]) == entry.ids  # instruction-independent
        full = plain.start().append_tokens(ids)[-1:]
        state = cached.start()
        np.testing.assert_allclose(state.prefill(ids), full, atol=1e-5, rtol=0)
        assert state.length == len(ids)
        np.testing.assert_allclose(state.append_tokens([7]), plain_continue(plain, ids, 7), atol=1e-5, rtol=0)
        want, got = plain.generate(prompt, 12, stop_at_eos=False), cached.generate(prompt, 12, stop_at_eos=False)
        assert got.token_ids == want.token_ids and got.prompt_tokens == want.prompt_tokens
        want_c = plain.generate(prompt, 24, constrained=True, task="mpc")
        got_c = cached.generate(prompt, 24, constrained=True, task="mpc")
        assert got_c.token_ids == want_c.token_ids and got_c.forced_tokens == want_c.forced_tokens
    stats = cached.prefix_stats
    assert stats["full"] == 9 and stats["partial"] == stats["miss"] == 0
    assert stats["reused_tokens"] == 9 * len(entry)
    assert plain.prefix_stats["full"] == 0  # nothing registered: plain prefills


def plain_continue(gen: OnnxGenerator, ids: list[int], token: int) -> np.ndarray:
    state = gen.start()
    state.append_tokens(ids)
    return state.append_tokens([token])


def test_prompt_not_starting_with_the_prefix_falls_back(paths):
    for layout, path in paths.items():
        plain, cached = OnnxGenerator(path, threads=1), OnnxGenerator(path, threads=1)
        ids = plain.encode(build_mpc_prompt(instructions(1)[0]))
        reference = plain.start().append_tokens(ids)[-1:]
        # ids that share their first 10 tokens with the prompt, then differ (as when BPE merges
        # the prefix's last characters with the instruction's first ones)
        other = (ids[10] + 1) % plain.spec.vocab_size
        cached.cache_prefix(ids[:10] + [other] + ids[11:20])
        np.testing.assert_allclose(cached.start().prefill(ids), reference, atol=1e-5, rtol=0, err_msg=layout)
        assert cached.prefix_stats["partial"] == 1 and cached.prefix_stats["reused_tokens"] == 10
        # nothing in common: a full prefill, counted as a miss
        cached.clear_prefixes()
        cached.cache_prefix([(ids[0] + 1) % plain.spec.vocab_size] + ids[1:20])
        np.testing.assert_allclose(cached.start().prefill(ids), reference, atol=1e-5, rtol=0, err_msg=layout)
        assert cached.prefix_stats["miss"] == 1 and cached.prefix_stats["reused_tokens"] == 10
        # a prompt that *is* the prefix (or shorter): its last token still runs, for its logits
        cached.cache_prefix(ids)
        np.testing.assert_allclose(cached.start().prefill(ids), reference, atol=1e-5, rtol=0, err_msg=layout)
        np.testing.assert_allclose(cached.start().prefill(ids[:8]), plain.start().append_tokens(ids[:8])[-1:],
                                   atol=1e-5, rtol=0, err_msg=layout)
        assert cached.prefix_stats["partial"] == 3 and cached.prefix_stats["reused_tokens"] == 10 + len(ids) - 1 + 7


def test_prefix_cache_limits_and_errors(paths):
    gen = OnnxGenerator(paths["shared"], threads=1)
    with pytest.raises(KVCapacityError, match=f"no room in the KV cache capacity {CAPACITY}"):
        gen.cache_prefix([5] * CAPACITY)
    assert gen.prefixes == ()
    for bad in ([], [5, 1.5], [[5, 6]]):
        with pytest.raises(ValueError, match="cache_prefix needs a non-empty list of integer token ids"):
            gen.cache_prefix(bad)
    with pytest.raises(ValueError, match="must lie in"):
        gen.cache_prefix([5, gen.spec.vocab_size])
    assert gen.prefixes == ()
    gen.cache_prefix([5] * (CAPACITY - 6))
    state = gen.start()
    with pytest.raises(KVCapacityError, match=f"exceed the KV cache capacity {CAPACITY}"):
        state.prefill([5] * (CAPACITY + 1))
    with pytest.raises(ValueError, match="append_tokens"):
        state.prefill([5, 1.5])
    # registering a prefix runs the model on the shared buffers: an open state is then stale
    older = gen.start()
    older.append_tokens([5, 6])
    gen.cache_prefix([5, 6, 7])
    with pytest.raises(RuntimeError, match="no longer holds the shared KV cache"):
        older.append_tokens([8])
    older.reset()
    gen.start()
    with pytest.raises(RuntimeError, match="no longer holds the shared KV cache"):
        older.prefill([5, 6, 7, 8])  # refused before the cached prefix is copied into the buffers
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix_length([], [1]) == 0


def test_llm_worker_registers_the_mpc_prefix_once(path):
    gen = OnnxGenerator(path, threads=1)
    worker = LLMWorker(gen, max_new_tokens=8)
    worker.warm_up()
    (entry,) = gen.prefixes
    assert worker.prefix_tokens == len(entry) > 0
    probes = [gen.encode(build_mpc_prompt(t)) for t in PREFIX_PROBES]
    assert all(tuple(p[:len(entry)]) == entry.ids for p in probes)
    assert len({p[len(entry)] for p in probes}) == len(probes)  # the longest common prefix: the next ids differ
    assert worker.summary()["prefix_cache"]["prefix_tokens"] == len(entry)
    assert worker.summary()["prefix_cache"]["full"] == 1  # the warm-up generation started from it


def test_policy_prefix_cache_is_opt_in_and_changes_no_answer(paths):
    from edge_runtime.decoding.generator import OnnxPolicy

    prompts = [build_mpc_prompt(t) for t in instructions(3)]
    plain, cached = OnnxPolicy(paths["shared"], threads=1), OnnxPolicy(paths["shared"], threads=1, prefix_cache=True)
    assert plain.generate(prompts, 12) == cached.generate(prompts, 12)
    assert plain.generator.prefixes == () and len(cached.generator.prefixes) == 1
    assert cached.generator.prefix_stats["full"] == 3
