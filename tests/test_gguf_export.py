"""edge-export --format gguf: metadata, weights, logits of uniform and non-uniform (pruned) models.

No llama.cpp here, so the file is checked three independent ways: read back with ``gguf.GGUFReader``
(every metadata key, every tensor against the source after undoing llama.cpp's q/k permutation);
the uniform files go back through our GGUF *importer* and must give the source model's logits
(names, permutation and tokenizer right in both directions); the ``deci`` files (per-layer heads
and MLP widths, zero-padded query heads for biased Qwen2 layers) are run by a numpy forward written
here from llama.cpp's graph (per-layer head counts read from the file's metadata) and compared with
the PyTorch source. Where ``llama_cpp`` is importable, greedy tokens are compared with llama.cpp itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")

from tokenizers import Tokenizer  # noqa: E402

from edge_runtime.contracts.arch_spec import LayerSpec  # noqa: E402
from edge_runtime.contracts.chat_format import ChatFormat  # noqa: E402
from edge_runtime.export import cli  # noqa: E402
from edge_runtime.export.gguf_export import GGUF_TYPES, chatml_template, export_gguf, pad_query_heads  # noqa: E402
from edge_runtime.model.build import build_model, preset_spec, resize_layer  # noqa: E402
from edge_runtime.model.gguf_import import import_gguf  # noqa: E402
from edge_runtime.model.gguf_layout import gguf_tensor_name, unpermute_qk  # noqa: E402
from edge_runtime.model.io import load_model, save_model  # noqa: E402
from edge_runtime.model.tokenizer import save_tokenizer, train_tokenizer  # noqa: E402

torch.set_num_threads(1)
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]
IDS = [5, 17, 40, 77, 120, 200, 9, 250, 33]
CORPUS = ["Drive at 2.9 m/s along the centreline, please.", "Reverse slowly and keep away from the left wall!",
          "Smooth driving: 1.5 m/s, no jerks. <answer>v=1.5</answer>", "gap of 7 m to the car ahead"] * 5


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf_export")


@pytest.fixture(scope="module")
def tokenizer_path(root) -> Path:
    """Our tiny byte-level BPE plus ChatML's turn tokens (so one model can carry a chat format)."""
    tok = train_tokenizer(CORPUS, vocab_size=300)
    tok.add_special_tokens(CHATML_TOKENS)
    return save_tokenizer(tok, root / "tok.json")


@pytest.fixture(scope="module")
def vocab(tokenizer_path) -> int:
    return Tokenizer.from_file(str(tokenizer_path)).get_vocab_size()


def _randomise(model, seed: int) -> None:
    """Weights large enough for varied logits, norms away from 1 and non-zero biases (so they matter)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.12)


def _model_dir(root: Path, name: str, family: str, vocab: int, tokenizer_path: Path,
               resized: tuple[tuple[int, LayerSpec], ...] = (), chatml: bool = False, seed: int = 0) -> Path:
    if family == "llama":
        spec = preset_spec("llama-4m", vocab_size=vocab, num_layers=3, intermediate_size=256,
                           rope_theta=50000.0, rms_norm_eps=1e-5, max_position_embeddings=512)
    else:
        spec = preset_spec("qwen2-1m", vocab_size=vocab, num_layers=3, max_position_embeddings=384)
    model = build_model(spec, seed=seed)
    for index, layer_spec in resized:
        resize_layer(model, index, layer_spec)
    _randomise(model, seed + 1)
    out = save_model(model, root / name, tokenizer_json=tokenizer_path)
    if chatml:
        ChatFormat.chatml(system="You set MPC parameters.", pad_token="<|pad|>").save(out / "chat_format.json")
    return out


@pytest.fixture(scope="module")
def dirs(root, vocab, tokenizer_path) -> dict[str, Path]:
    return {
        "llama": _model_dir(root, "llama", "llama", vocab, tokenizer_path, seed=0),
        "qwen2": _model_dir(root, "qwen2", "qwen2", vocab, tokenizer_path, chatml=True, seed=10),
        # pruned Llama: layer 1 has 4 of 8 query heads, 1 of 4 KV heads and half the MLP
        "llama_pruned": _model_dir(root, "llama_pruned", "llama", vocab, tokenizer_path,
                                   ((1, LayerSpec(4, 1, 128)), (2, LayerSpec(8, 2, 192))), seed=20),
        # pruned Qwen2 (biases): query heads pruned in layers 1 and 2 -> zero-padded in the file
        "qwen2_pruned": _model_dir(root, "qwen2_pruned", "qwen2", vocab, tokenizer_path,
                                   ((1, LayerSpec(2, 1, 128)), (2, LayerSpec(2, 2, 256))), seed=30),
    }


@pytest.fixture(scope="module")
def files(root, dirs) -> dict[tuple[str, str], Path]:
    """(model, gguf type) -> exported file, written by the CLI."""
    out = {}
    for name, gtype in (("llama", "f32"), ("qwen2", "f32"), ("llama_pruned", "f32"), ("qwen2_pruned", "f32"),
                        ("llama_pruned", "q8_0"), ("llama", "f16"), ("llama_pruned", "q4_0")):
        path = root / f"{name}-{gtype}.gguf"
        assert cli.main([str(dirs[name]), "-o", str(path), "--gguf-type", gtype]) == 0
        out[(name, gtype)] = path
    return out


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------

def fields(path: Path) -> tuple[dict, dict]:
    """-> (metadata key -> value, tensor name -> (type name, fp32 array))."""
    reader = gguf.GGUFReader(str(path))
    meta = {f.name: f.contents() for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    tensors = {t.name: (t.tensor_type.name, np.array(gguf.quants.dequantize(t.data, t.tensor_type), np.float32))
               for t in reader.tensors}
    return meta, tensors


def per_layer(meta: dict, arch: str, key: str, n: int) -> list[int]:
    value = meta[f"{arch}.{key}"]
    return list(value) if isinstance(value, list) else [value] * n


def hf_layout(meta: dict, tensors: dict) -> dict[str, np.ndarray]:
    """GGUF tensors with llama.cpp's q/k permutation undone (llama / deci), keyed by GGUF name."""
    arch = meta["general.architecture"]
    n = meta[f"{arch}.block_count"]
    heads, kv = per_layer(meta, arch, "attention.head_count", n), per_layer(meta, arch, "attention.head_count_kv", n)
    out = {}
    for name, (_, arr) in tensors.items():
        if arch in ("llama", "deci") and (".attn_q." in name or ".attn_k." in name):
            i = int(name.split(".")[1])
            arr = unpermute_qk(arr, heads[i] if ".attn_q." in name else kv[i])
        out[name] = arr
    return out


def numpy_logits(meta: dict, w: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """llama.cpp's llama / qwen2 / deci graph in numpy (HF rotate-half RoPE on un-permuted q/k), with
    every width read from the file's metadata: per-layer head counts and MLP widths for deci."""
    arch = meta["general.architecture"]
    n = meta[f"{arch}.block_count"]
    heads, kv = per_layer(meta, arch, "attention.head_count", n), per_layer(meta, arch, "attention.head_count_kv", n)
    d, eps = meta[f"{arch}.attention.key_length"], meta[f"{arch}.attention.layer_norm_rms_epsilon"]
    theta = meta[f"{arch}.rope.freq_base"]
    t = len(ids)
    x = w["token_embd.weight"][ids].astype(np.float64)

    def rms(v, g):
        return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps) * g

    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(v):  # (t, h, d), rotate halves
        rot = np.concatenate([-v[..., d // 2:], v[..., : d // 2]], -1)
        return v * cos[:, None] + rot * sin[:, None]

    mask = np.triu(np.full((t, t), -np.inf), 1)
    for i in range(n):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q = h @ w[p + "attn_q.weight"].T + w.get(p + "attn_q.bias", 0)
        k = h @ w[p + "attn_k.weight"].T + w.get(p + "attn_k.bias", 0)
        v = h @ w[p + "attn_v.weight"].T + w.get(p + "attn_v.bias", 0)
        q, k, v = rope(q.reshape(t, heads[i], d)), rope(k.reshape(t, kv[i], d)), v.reshape(t, kv[i], d)
        group = heads[i] // kv[i]
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(d) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        att = np.einsum("hqk,khd->qhd", s, v).reshape(t, heads[i] * d)
        x = x + att @ w[p + "attn_output.weight"].T + w.get(p + "attn_output.bias", 0)
        h = rms(x, w[p + "ffn_norm.weight"])
        gate = h @ w[p + "ffn_gate.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w[p + "ffn_up.weight"].T)) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"])
    return x @ w.get("output.weight", w["token_embd.weight"]).T


def torch_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    model, _ = load_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def source_state(model_dir: Path) -> dict[str, np.ndarray]:
    model, _ = load_model(model_dir)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# metadata and weights
# ---------------------------------------------------------------------------------------------------------------

def test_gguf_types_are_the_cli_choices():
    """The CLI spells the choices out (its module imports no gguf code); they must stay the exporter's."""
    assert cli.GGUF_TYPE_CHOICES == GGUF_TYPES


@pytest.mark.parametrize("name, arch", [("llama", "llama"), ("qwen2", "qwen2"), ("llama_pruned", "deci"),
                                        ("qwen2_pruned", "deci")])
def test_metadata(files, dirs, tokenizer_path, name, arch):
    meta, tensors = fields(files[(name, "f32")])
    _, spec = load_model(dirs[name])
    assert meta["general.architecture"] == arch
    assert meta["general.file_type"] == gguf.LlamaFileType.ALL_F32
    assert meta[f"{arch}.block_count"] == spec.num_layers
    assert meta[f"{arch}.context_length"] == spec.max_position_embeddings
    assert meta[f"{arch}.embedding_length"] == spec.hidden_size
    assert meta[f"{arch}.attention.key_length"] == meta[f"{arch}.attention.value_length"] == spec.head_dim
    assert meta[f"{arch}.rope.dimension_count"] == spec.head_dim
    assert meta[f"{arch}.rope.freq_base"] == pytest.approx(spec.rope_theta)
    assert meta[f"{arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(spec.rms_norm_eps)
    assert meta[f"{arch}.vocab_size"] == spec.vocab_size
    heads, kv, ffn = (meta[f"{arch}.{k}"] for k in ("attention.head_count", "attention.head_count_kv",
                                                    "feed_forward_length"))
    if arch == "deci":  # per-layer arrays
        assert ffn == [layer.intermediate_size for layer in spec.layers]
        assert kv == [layer.num_kv_heads for layer in spec.layers]
        full = spec.hidden_size // spec.head_dim
        # biased (qwen2) layers are zero-padded to full query heads; llama keeps its pruned heads
        assert heads == ([full] * spec.num_layers if spec.q_bias else [layer.num_q_heads for layer in spec.layers])
        assert len(set(map(tuple, zip(heads, kv, ffn)))) > 1
    else:
        layer = spec.layers[0]
        assert (heads, kv, ffn) == (layer.num_q_heads, layer.num_kv_heads, layer.intermediate_size)
    assert ("output.weight" in tensors) == (not spec.tie_word_embeddings)
    # tokenizer: llama.cpp's gpt2 BPE with the smollm pre-tokenizer (digits alone, then GPT-2 split)
    data = json.loads(Path(tokenizer_path).read_text())
    vocab = dict(data["model"]["vocab"], **{t["content"]: t["id"] for t in data["added_tokens"]})
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.ggml.tokens"] == sorted(vocab, key=vocab.get)
    types = dict(zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]))
    assert types["<|endoftext|>"] == types["<|im_end|>"] == 3 and types["<answer>"] == 4 and types["Ġt"] == 1
    assert meta["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    chatml = name == "qwen2"
    assert meta["tokenizer.ggml.eos_token_id"] == vocab["<|im_end|>" if chatml else "<|endoftext|>"]
    assert meta["tokenizer.ggml.padding_token_id"] == vocab["<|pad|>"]
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert ("tokenizer.chat_template" in meta) == chatml


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama_pruned"])
def test_weights_read_back_equal_the_source(files, dirs, name):
    meta, tensors = fields(files[(name, "f32")])
    got = hf_layout(meta, tensors)
    state = source_state(dirs[name])
    _, spec = load_model(dirs[name])
    expected = spec.expected_tensor_shapes()
    assert len(got) == len(expected)
    for hf, arr in state.items():
        if hf in expected:
            assert np.array_equal(got[gguf_tensor_name(hf)], arr), hf
    assert all(t == "F32" for t, _ in tensors.values())


def test_padded_query_heads_keep_the_real_heads_in_their_kv_group(files, dirs):
    """qwen2_pruned layer 1: 2 query heads on 1 KV head -> 4 (2 real, 2 zero); layer 2: 2 heads on
    2 KV heads -> 4, real heads at positions 0 and 2 (one per group)."""
    meta, tensors = fields(files[("qwen2_pruned", "f32")])
    got = hf_layout(meta, tensors)
    state = source_state(dirs["qwen2_pruned"])
    d = 32
    for layer, positions in ((1, [0, 1]), (2, [0, 2])):
        q = got[f"blk.{layer}.attn_q.weight"].reshape(4, d, -1)
        src = state[f"model.layers.{layer}.self_attn.q_proj.weight"].reshape(2, d, -1)
        assert np.array_equal(q[positions], src)
        assert not np.any(np.delete(q, positions, axis=0))
        o = got[f"blk.{layer}.attn_output.weight"].reshape(128, 4, d)
        o_src = state[f"model.layers.{layer}.self_attn.o_proj.weight"].reshape(128, 2, d)
        assert np.array_equal(o[:, positions], o_src)
        assert got[f"blk.{layer}.attn_q.bias"].shape == (128,)
    w = np.arange(2 * 4 * 3, dtype=np.float32).reshape(8, 3)
    q, b, o = pad_query_heads(w, None, w.T, 2, 2, 2, 4)  # nothing to pad: unchanged
    assert np.array_equal(q, w) and b is None and np.array_equal(o, w.T)


# ---------------------------------------------------------------------------------------------------------------
# logits
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_uniform_file_round_trips_through_the_importer(files, dirs, root, name):
    """Export, import with edge-train import-gguf's code, same logits: names and permutation agree."""
    imported = import_gguf(files[(name, "f32")], root / f"reimported-{name}").out_dir
    ref = torch_logits(dirs[name], IDS)
    np.testing.assert_allclose(torch_logits(imported, IDS), ref, rtol=0, atol=1e-5)
    src = Tokenizer.from_file(str(dirs[name] / "tokenizer.json"))
    back = Tokenizer.from_file(str(imported / "tokenizer.json"))
    for text in ["Drive at 3.25 m/s <answer>", "<|im_start|>user\nhi<|im_end|>\n"]:
        assert back.encode(text, add_special_tokens=False).ids == src.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("name", ["llama", "qwen2", "llama_pruned", "qwen2_pruned"])
def test_numpy_llama_cpp_graph_on_the_file_gives_the_source_logits(files, dirs, name):
    meta, tensors = fields(files[(name, "f32")])
    got = numpy_logits(meta, hf_layout(meta, tensors), IDS)
    np.testing.assert_allclose(got, torch_logits(dirs[name], IDS), rtol=0, atol=1e-4)


def logits_of_its_dequantised_weights(meta: dict, tensors: dict, model_dir: Path) -> np.ndarray:
    """The file's logits (numpy llama.cpp graph), checked to equal (1e-4) those of the source model holding
    the file's dequantised weights: a quantised file is exactly its dequantised model."""
    weights = hf_layout(meta, tensors)
    got = numpy_logits(meta, weights, IDS)
    model, _ = load_model(model_dir)
    model.load_state_dict({hf: torch.from_numpy(weights[gguf_tensor_name(hf)]) for hf in model.state_dict()})
    with torch.no_grad():
        dequantised = model(torch.tensor([IDS])).logits[0].double().numpy()
    np.testing.assert_allclose(got, dequantised, rtol=0, atol=1e-4)
    return got


def test_q8_0_and_f16_files(files, dirs):
    meta, tensors = fields(files[("llama_pruned", "q8_0")])
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    kinds = {name: t for name, (t, _) in tensors.items()}
    assert kinds["blk.1.attn_q.weight"] == "Q8_0" and kinds["blk.0.attn_norm.weight"] == "F32"
    ref = torch_logits(dirs["llama_pruned"], IDS)
    got = logits_of_its_dequantised_weights(meta, tensors, dirs["llama_pruned"])
    # ... and close to the fp32 source (random weights: rms error ~4 % of the logit spread)
    rms = np.sqrt(np.mean((got - ref) ** 2))
    assert 0 < rms < 0.1 * np.std(ref), (rms, np.std(ref))
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 8 / 9
    meta16, tensors16 = fields(files[("llama", "f16")])
    assert meta16["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert tensors16["blk.0.ffn_up.weight"][0] == "F16" and tensors16["output_norm.weight"][0] == "F32"
    ref16 = torch_logits(dirs["llama"], IDS)
    got16 = numpy_logits(meta16, hf_layout(meta16, tensors16), IDS)
    assert np.sqrt(np.mean((got16 - ref16) ** 2)) < 0.01 * np.std(ref16)  # f16: ~0.2 %
    assert np.max(np.abs(got16 - ref16)) < 0.05 * np.std(ref16)
    assert files[("llama_pruned", "q8_0")].stat().st_size < 0.4 * files[("llama_pruned", "f32")].stat().st_size


def test_q4_0_file_keeps_the_embedding_at_q8_0_and_computes_its_dequantised_weights(files, dirs):
    meta, tensors = fields(files[("llama_pruned", "q4_0")])
    assert meta["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q4_0
    kinds = {name: t for name, (t, _) in tensors.items()}
    assert kinds["blk.1.attn_q.weight"] == "Q4_0" and kinds["blk.0.ffn_down.weight"] == "Q4_0"
    assert kinds["token_embd.weight"] == "Q8_0" and kinds["blk.0.attn_norm.weight"] == "F32"
    got = logits_of_its_dequantised_weights(meta, tensors, dirs["llama_pruned"])
    ref = torch_logits(dirs["llama_pruned"], IDS)
    q8 = numpy_logits(*(lambda m, t: (m, hf_layout(m, t)))(*fields(files[("llama_pruned", "q8_0")])), IDS)
    rms4, rms8 = np.sqrt(np.mean((got - ref) ** 2)), np.sqrt(np.mean((q8 - ref) ** 2))
    assert rms8 < rms4 < 0.5 * np.std(ref), (rms8, rms4, np.std(ref))  # 4 bits: coarser than 8, still the model
    assert files[("llama_pruned", "q4_0")].stat().st_size < files[("llama_pruned", "q8_0")].stat().st_size


def test_chat_template_renders_like_the_chat_format(files):
    from jinja2 import Template

    meta, _ = fields(files[("qwen2", "f32")])
    fmt = ChatFormat.chatml(system="You set MPC parameters.", pad_token="<|pad|>")
    assert meta["tokenizer.chat_template"] == chatml_template(fmt.system)
    rendered = Template(meta["tokenizer.chat_template"]).render(
        messages=[{"role": "user", "content": "Drive at 2 m/s"}], add_generation_prompt=True)
    assert rendered == fmt.render("Drive at 2 m/s")


# ---------------------------------------------------------------------------------------------------------------
# CLI: bad input, atomic write
# ---------------------------------------------------------------------------------------------------------------

def _bad(capsys, argv: list[str], *needles: str) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("edge-export: error: "), err
    for needle in needles:
        assert needle in err, err


def test_bad_inputs_exit_2_with_one_line(capsys, tmp_path, dirs, root, vocab, tokenizer_path):
    src = str(dirs["llama"])
    _bad(capsys, [src, "-o", str(tmp_path / "a.gguf"), "--gguf-type", "q4_k"], "--gguf-type", "q4_k")
    _bad(capsys, [src, "-o", str(tmp_path / "a.gguf"), "--format", "onnx"], "a.gguf", ".onnx")
    _bad(capsys, [src, "-o", str(tmp_path / "a.onnx"), "--format", "gguf"], "a.onnx", ".gguf")
    _bad(capsys, [src, "-o", str(tmp_path / "a.onnx"), "--gguf-type", "f16"], "--gguf-type", "--format gguf")
    _bad(capsys, [src, "-o", str(tmp_path / "a.gguf"), "--quantize", "int8"], "--gguf-type")
    _bad(capsys, [str(tmp_path / "missing"), "-o", str(tmp_path / "a.gguf")], "missing", "does not exist")
    folder = tmp_path / "dir.gguf"
    folder.mkdir()
    _bad(capsys, [src, "-o", str(folder)], "dir.gguf", "directory")
    # a biased layer whose query heads cannot be zero-padded: 4 full heads over 3 KV heads
    odd = _model_dir(root, "qwen2_odd", "qwen2", vocab, tokenizer_path, ((1, LayerSpec(3, 3, 128)),), seed=40)
    _bad(capsys, [str(odd), "-o", str(tmp_path / "odd.gguf")], "layer 1", "3 query / 3 KV heads", "ONNX")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in dirs["llama"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"}, "normalizer": None}))
    _bad(capsys, [str(broken), "-o", str(tmp_path / "broken.gguf")], "tokenizer.json", "WordPiece")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "dir.gguf"]  # nothing (half-)written


def test_existing_output_is_replaced_atomically(tmp_path, dirs, files):
    """Like edge-export's ONNX output: an existing file is replaced (one os.replace), no temp left."""
    out = tmp_path / "model.gguf"
    out.write_bytes(b"old")
    assert cli.main([str(dirs["llama"]), "-o", str(out)]) == 0  # --format inferred from .gguf
    assert out.read_bytes() == files[("llama", "f32")].read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["model.gguf"]


def test_export_gguf_leaves_nothing_when_the_check_fails(tmp_path, dirs, monkeypatch):
    from edge_runtime.export import gguf_export

    def fail(*_a, **_k):
        raise gguf_export.GGUFExportError("read-back mismatch")

    monkeypatch.setattr(gguf_export, "_check_read_back", fail)
    with pytest.raises(gguf_export.GGUFExportError):
        export_gguf(dirs["llama"], tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp itself (only where llama-cpp-python is installed; see docs/export.md, GGUF)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["llama", "qwen2", "llama_pruned", "qwen2_pruned"])
def test_llama_cpp_greedy_tokens_match_pytorch(files, dirs, name):
    llama_cpp = pytest.importorskip("llama_cpp")
    n_new = 16
    model, _ = load_model(dirs[name])
    ids = list(IDS)
    with torch.no_grad():
        for _ in range(n_new):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    # logits_all: llama-cpp-python 0.3.x copies logits into Llama.scores only with it (without, every
    # row reads zeros and the argmax is token 0 -- what this test saw before it was set)
    llm = llama_cpp.Llama(model_path=str(files[(name, "f32")]), n_ctx=64, n_threads=1, verbose=False,
                          logits_all=True)
    got = list(IDS)
    llm.eval(got)
    for _ in range(n_new):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))  # logits of the last evaluated token
        got.append(nxt)
        llm.eval([nxt])
    assert got == ids


def test_llama_cpp_runs_the_q4_0_file_like_its_dequantised_weights(files, dirs):
    llama_cpp = pytest.importorskip("llama_cpp")
    meta, tensors = fields(files[("llama_pruned", "q4_0")])
    want = numpy_logits(meta, hf_layout(meta, tensors), IDS)
    llm = llama_cpp.Llama(model_path=str(files[("llama_pruned", "q4_0")]), n_ctx=64, n_threads=1, verbose=False,
                          logits_all=True)
    llm.eval(list(IDS))
    got = np.asarray([llm.scores[i] for i in range(len(IDS))], dtype=np.float64)
    # llama.cpp multiplies Q4_0 weights with activations quantised to 8 bits: close, not identical
    assert np.sqrt(np.mean((got - want) ** 2)) < 0.05 * np.std(want)
    assert np.mean(got.argmax(-1) == want.argmax(-1)) >= 8 / 9
