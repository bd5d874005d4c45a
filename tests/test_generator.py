"""The vehicle-side ONNX Runtime generator: same tokens as PyTorch greedy, timings, load errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from edge_runtime.contracts.arch_spec import LayerSpec
from edge_runtime.contracts.generation import Generation
from edge_runtime.decoding.generator import DecodeState, OnnxGenerator, OnnxPolicy
from edge_runtime.decoding.model_file import REQUIRED_METADATA, ModelLoadError
from edge_runtime.decoding.providers import resolve_providers
from edge_runtime.decoding.step_api import GenerationResult
from edge_runtime.evaluation.torch_policy import TorchPolicy
from edge_runtime.export.onnx_export import export_onnx
from edge_runtime.model.tokenizer import load_tokenizer
from edge_runtime.tasks.instructions import instruction_set
from edge_runtime.tasks.prompts import build_mpc_prompt
from onnx_fixtures import build_tiny_model_dir, with_metadata

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def prompts(n: int) -> list[str]:
    return [build_mpc_prompt(i.text) for i in instruction_set("validation")[1::3][:n]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny non-uniform qwen2 (layer 1 pruned to 2 q / 1 kv heads) with weights scaled to std
    ~0.12 so that greedy decoding emits varied tokens rather than one repeated token."""
    return build_tiny_model_dir(tmp_path_factory.mktemp("gen"), seed=3, weight_scale=6.0, vocab_size=320)


@pytest.fixture(scope="module")
def onnx_path(model_dir) -> Path:
    return export_onnx(model_dir, model_dir.parent / "model.onnx")


@pytest.fixture(scope="module")
def generator(onnx_path) -> OnnxGenerator:
    return OnnxGenerator(onnx_path, threads=1)


@pytest.fixture(scope="module")
def shared_path(model_dir) -> Path:
    return export_onnx(model_dir, model_dir.parent / "model-shared.onnx", kv_cache="shared", capacity=512)


@pytest.fixture(scope="module", params=["concat", "shared"])
def any_generator(request, generator, shared_path) -> OnnxGenerator:
    """The generator of each KV-cache layout (the step API must behave the same on both)."""
    return generator if request.param == "concat" else OnnxGenerator(shared_path, threads=1)


@pytest.fixture(scope="module")
def torch_policy(model_dir) -> TorchPolicy:
    policy = TorchPolicy.from_dir(model_dir, batch_size=1)
    return policy


# ------------------------------------------------------------------------ same as PyTorch
def test_same_tokens_as_torch_greedy(generator, torch_policy):
    for prompt in prompts(4):
        ids = torch_policy.tokenizer.encode(prompt).ids
        with torch.no_grad():
            ref = torch_policy.model.generate(
                input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=30, do_sample=False, eos_token_id=0, pad_token_id=1)[0, len(ids):].tolist()
        if 0 in ref:
            ref = ref[: ref.index(0) + 1]
        result = generator.generate(prompt, 30)
        assert list(result.token_ids) == ref
        assert result.prompt_tokens == len(ids)


def test_policy_matches_torch_policy(onnx_path, torch_policy, model_dir):
    policy = OnnxPolicy(onnx_path, threads=1)
    ps = prompts(4)
    got, ref = policy.generate(ps, 30), torch_policy.generate(ps, 30)
    assert all(isinstance(g, Generation) for g in got)
    assert got == ref
    assert len({g.text for g in got}) > 1 and len(set(got[0].text)) > 1  # not a degenerate repeat
    assert policy.name == "model"
    assert policy.parameter_count() == torch_policy.parameter_count()
    assert policy.file_size() == onnx_path.stat().st_size
    assert [r.emitted_tokens for r in policy.last_results] == [g.emitted_tokens for g in got]


def test_result_counts_and_timings(generator):
    result = generator.generate(prompts(1)[0], 16, stop_at_eos=False)
    assert isinstance(result, GenerationResult)
    assert result.emitted_tokens == len(result.token_ids) == 16
    assert result.time_to_first_token_s > 0
    assert len(result.decode_times_s) == result.emitted_tokens - 1
    assert all(t > 0 for t in result.decode_times_s)
    assert result.total_s >= result.time_to_first_token_s + sum(result.decode_times_s)
    assert result.text == generator.decode(result.token_ids)


def test_stops_at_eos_from_metadata(generator, onnx_path, tmp_path):
    """Make the 4th greedy token the file's EOS: generation stops on it, counts it, drops it from the text."""
    prompt = prompts(1)[0]
    free = generator.generate(prompt, 12, stop_at_eos=False)
    stop = free.token_ids[3]
    first = free.token_ids.index(stop)

    def set_eos(props):
        generation = json.loads(props["edge_runtime.generation"])
        generation["eos_id"] = stop
        props["edge_runtime.generation"] = json.dumps(generation)

    g = OnnxGenerator(with_metadata(onnx_path, tmp_path / "eos.onnx", set_eos), threads=1)
    result = g.generate(prompt, 12)
    assert result.stopped_at_eos
    assert result.token_ids == free.token_ids[: first + 1]
    assert result.emitted_tokens == first + 1
    assert len(result.decode_times_s) == first
    assert result.text == g.decode(free.token_ids[:first])  # the EOS itself is not part of the text
    assert g.generate(prompt, 12, stop_at_eos=False).token_ids == free.token_ids


def test_metadata_is_read(generator, model_dir):
    assert generator.spec.layers[1] == LayerSpec(2, 1, 192)
    assert generator.eos_id == 0 and generator.pad_id == 1
    assert generator.generation["max_new_tokens"] == {"mpc": 200, "decision": 48}
    assert generator.dtype == "fp32" and generator.kv_dtype == np.float32
    assert "qv" in [p["name"] for p in generator.answer_schema["parameters"]]
    assert generator.tokenizer.get_vocab_size() == load_tokenizer(model_dir / "tokenizer.json").get_vocab_size()


def test_bad_arguments(generator):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generator.generate("hello", 0)
    with pytest.raises(ValueError, match="zero tokens"):
        generator.generate("", 4)
    with pytest.raises(ValueError, match="threads"):
        OnnxGenerator(generator.path, threads=0)


# ------------------------------------------------------------------------------ load errors
def _assert_one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_corrupt_file(tmp_path):
    bad = tmp_path / "random.onnx"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(bad)
    _assert_one_line(exc, str(bad))


def test_truncated_file(onnx_path, tmp_path):
    cut = tmp_path / "truncated.onnx"
    data = onnx_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(cut)
    _assert_one_line(exc, str(cut))


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(tmp_path / "nope.onnx")
    _assert_one_line(exc, "nope.onnx", "not found")


@pytest.mark.parametrize("field", ["edge_runtime.tokenizer", "edge_runtime.arch_spec", "edge_runtime.generation"])
def test_missing_metadata_field(onnx_path, tmp_path, field):
    assert field in REQUIRED_METADATA
    path = with_metadata(onnx_path, tmp_path / "nometa.onnx", lambda props: props.pop(field))
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(path)
    _assert_one_line(exc, str(path), field)


def test_invalid_metadata_json_and_version(onnx_path, tmp_path):
    path = with_metadata(onnx_path, tmp_path / "badjson.onnx",
                          lambda props: props.__setitem__("edge_runtime.arch_spec", "{not json"))
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(path)
    _assert_one_line(exc, "edge_runtime.arch_spec", "JSON")
    path = with_metadata(onnx_path, tmp_path / "v9.onnx",
                          lambda props: props.__setitem__("edge_runtime.format_version", "9"))
    with pytest.raises(ModelLoadError) as exc:
        OnnxGenerator(path)
    _assert_one_line(exc, "format_version")


# -------------------------------------------------------------------------------- providers
def test_providers(onnx_path):
    assert resolve_providers(None) == (["CPUExecutionProvider"], [])
    auto, notes = resolve_providers("auto")
    assert auto[-1] == "CPUExecutionProvider" and notes == []
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = OnnxGenerator(onnx_path, providers=["cuda", "tensorrt"], threads=1)
        assert g.providers == ["CPUExecutionProvider"]
        assert len(g.unavailable_providers) == 2 and "CUDAExecutionProvider unavailable" in g.unavailable_providers[0]
        assert any("unavailable" in str(w.message) for w in caught)
        assert len(g.generate("Instruction: go", 3).token_ids) >= 1


# ---------------------------------------------------------------------------------- step API
def test_step_api_reproduces_greedy_generation(any_generator):
    """A greedy loop written with start() / append_tokens() gives generate()'s tokens, and the
    logits of each step equal those of one prefill over the whole sequence."""
    gen = any_generator
    prompt = prompts(1)[0]
    result = gen.generate(prompt, 12, stop_at_eos=False)
    ids = gen.encode(prompt)
    state = gen.start()
    assert isinstance(state, DecodeState) and state.length == 0
    logits = state.append_tokens(ids)
    assert logits.shape == (len(ids), gen.spec.vocab_size) and state.length == len(ids)
    out, steps = [int(np.argmax(logits[-1]))], [logits[-1]]
    while len(out) < 12:
        step = state.append_tokens([out[-1]])
        assert step.shape == (1, gen.spec.vocab_size)
        steps.append(step[-1])
        out.append(int(np.argmax(step[-1])))
    assert tuple(out) == result.token_ids
    assert state.length == len(ids) + 11
    full = gen.prefill_logits(ids + out[:-1])  # one run over prompt + answer: the same next-token logits
    np.testing.assert_allclose(np.stack(steps), full[len(ids) - 1:], atol=1e-4, rtol=0)


def test_step_api_several_tokens_at_once_and_reset(any_generator):
    gen = any_generator
    ids = gen.encode(prompts(2)[1])
    one_by_one = gen.start()
    rows = [one_by_one.append_tokens(ids[:5])[-1]] + [one_by_one.append_tokens([t])[-1] for t in ids[5:]]
    together = gen.start()
    np.testing.assert_allclose(together.append_tokens(ids)[4:], np.stack(rows), atol=1e-4, rtol=0)
    before = together.append_tokens([7])[-1].copy()
    together.reset()
    assert together.length == 0
    together.append_tokens(ids)
    np.testing.assert_allclose(together.append_tokens([7])[-1], before, atol=1e-5, rtol=0)  # reuse: same sequence, same logits


@pytest.mark.parametrize("bad", [[], [[1, 2]], [1.5], ["a"], [-1], [320]], ids=["empty", "2d", "float", "str", "negative",
                                                                                 "beyond-vocab"])
def test_step_api_rejects_bad_token_ids(generator, bad):
    state = generator.start()
    with pytest.raises(ValueError, match="append_tokens"):
        state.append_tokens(bad)
    assert state.length == 0
    assert state.append_tokens([3]).shape == (1, 320)  # the state is still usable


def test_step_api_shared_cache_has_one_owner_and_a_capacity(shared_path):
    gen = OnnxGenerator(shared_path, threads=1)
    old = gen.start()
    old.append_tokens([5, 6, 7])
    new = gen.start()  # takes the generator's cache buffers
    assert new.kv_cache is old.kv_cache and new.capacity == 512
    with pytest.raises(RuntimeError, match="no longer holds the shared KV cache"):
        old.append_tokens([8])
    new.append_tokens([5, 6, 7])
    old.reset()  # takes them back
    old.append_tokens([5])
    with pytest.raises(RuntimeError, match="no longer holds"):
        new.append_tokens([8])
    with pytest.raises(ValueError, match="exceed the KV cache capacity 512"):
        old.append_tokens([3] * 512)
    assert old.length == 1
    # concat states are independent: an older one keeps decoding
    concat = OnnxGenerator(shared_path.with_name("model.onnx"), threads=1)
    a = concat.start()
    a.append_tokens([5, 6, 7])
    b = concat.start()
    b.append_tokens([9])
    assert a.capacity is None and a.append_tokens([8]).shape == (1, 320) and a.length == 4


# ---------------------------------------------------------------------------------- torch-free
def test_generator_imports_without_torch():
    code = ("import sys; import edge_runtime.decoding.generator; "
            "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
