"""Model directories: save -> load parity, strict shape checks, plain HF loading, generation."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from edge_runtime.model.build import build_model, preset_spec
from edge_runtime.model.io import (
    ModelFormatError,
    load_model,
    load_pretrained_dir,
    save_model,
)
from edge_runtime.contracts.arch_spec import ArchSpec, LayerSpec
from edge_runtime.model.spec import spec_from_model

VOCAB = 256


def uniform_spec(family: str = "qwen2") -> ArchSpec:
    return preset_spec("qwen2-1m" if family == "qwen2" else "llama-4m", vocab_size=VOCAB, num_layers=3)


def nonuniform_spec(family: str = "qwen2") -> ArchSpec:
    """Layer 1 with half the heads (q and KV) and a 24-channel-smaller MLP."""
    base = uniform_spec(family)
    l0 = base.layers[0]
    return dataclasses.replace(base, layers=(
        l0, LayerSpec(l0.num_q_heads // 2, l0.num_kv_heads // 2, l0.intermediate_size - 24), l0))


def tokens(n: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def logits(model, ids=None) -> torch.Tensor:
    return model(tokens() if ids is None else ids).logits


@pytest.fixture(scope="module")
def saved_nonuniform(tmp_path_factory):
    spec = nonuniform_spec()
    model = build_model(spec, seed=3)
    out = save_model(model, tmp_path_factory.mktemp("m") / "nonuniform", metadata={"run": "test"})
    return model, spec, out


# ----------------------------------------------------------------- round trips
@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("uniform", [True, False])
def test_save_load_identical_logits(tmp_path, family, uniform):
    spec = uniform_spec(family) if uniform else nonuniform_spec(family)
    model = build_model(spec, seed=5)
    out = save_model(model, tmp_path / "m", spec=spec)
    loaded, loaded_spec = load_model(out)
    assert loaded_spec == spec
    assert spec_from_model(loaded) == spec
    assert torch.equal(logits(model), logits(loaded))
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) is spec.tie_word_embeddings
    assert not loaded.training


def test_directory_contents(saved_nonuniform, tmp_path):
    model, spec, out = saved_nonuniform
    names = {p.name for p in out.iterdir()}
    assert names == {"model.safetensors", "arch_spec.json", "config.json", "edge_runtime_meta.json"}
    assert not list(out.parent.glob(".*"))  # no temp dirs left behind
    stored = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in stored  # tied: stored once
    config = json.loads((out / "config.json").read_text())
    assert config["edge_runtime_nonuniform"] is True and config["head_dim"] == spec.head_dim
    meta = json.loads((out / "edge_runtime_meta.json").read_text())
    assert meta["metadata"] == {"run": "test"}
    assert meta["num_parameters"] == spec.num_parameters() == sum(p.numel() for p in model.parameters())
    for key in ("edge_runtime_version", "torch_version", "transformers_version", "model_sha256"):
        assert meta[key]


def test_no_pickle_files_written(saved_nonuniform):
    """Every file is JSON or safetensors: nothing that would need unpickling."""
    from safetensors import safe_open

    _, _, out = saved_nonuniform
    for path in out.rglob("*"):
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            assert path.name == "model.safetensors", path
            with safe_open(str(path), framework="pt") as f:
                assert len(list(f.keys())) > 0


def test_tokenizer_copied(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = Tokenizer(WordLevel({"[UNK]": 0, "left": 1, "right": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(tmp_path / "tok.json"))
    model = build_model(uniform_spec(), seed=0)
    out = save_model(model, tmp_path / "m", tokenizer_json=tmp_path / "tok.json")
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode("left right").ids == [1, 2]


def test_save_replaces_existing_model_dir_but_not_foreign_dirs(tmp_path):
    model = build_model(uniform_spec(), seed=0)
    out = save_model(model, tmp_path / "m")
    save_model(build_model(nonuniform_spec(), seed=1), out)
    assert load_model(out)[1] == nonuniform_spec()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FileExistsError):
        save_model(model, foreign)
    assert (foreign / "cat.jpg").exists()


def test_save_refuses_spec_that_does_not_match_model(tmp_path):
    model = build_model(uniform_spec(), seed=0)
    with pytest.raises(ModelFormatError, match="does not match"):
        save_model(model, tmp_path / "m", spec=nonuniform_spec())


def test_load_with_dtype(saved_nonuniform):
    _, _, out = saved_nonuniform
    model, _ = load_model(out, dtype=torch.bfloat16)
    assert model.model.layers[1].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32


# ------------------------------------------------------------ plain HF loading
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_uniform_loads_with_plain_from_pretrained(tmp_path, family):
    model = build_model(uniform_spec(family), seed=2)
    out = save_model(model, tmp_path / "m")
    hf = AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    assert torch.equal(logits(model), logits(hf))
    _via_dir, spec = load_pretrained_dir(out)  # has arch_spec.json -> our loader
    assert spec == uniform_spec(family)
    (out / "arch_spec.json").unlink()
    (out / "edge_runtime_meta.json").unlink()
    via_hf, spec = load_pretrained_dir(out)  # plain HF checkpoint dir
    assert spec == uniform_spec(family)
    assert torch.equal(logits(model), logits(via_hf))


def test_nonuniform_plain_from_pretrained_fails_loudly(saved_nonuniform):
    _, _, out = saved_nonuniform
    with pytest.raises(Exception, match="mismatch"):
        AutoModelForCausalLM.from_pretrained(out, local_files_only=True)


def test_load_pretrained_dir_errors(tmp_path, saved_nonuniform):
    with pytest.raises(ModelFormatError, match="no config.json"):
        load_pretrained_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ModelFormatError, match="unsupported model_type 'gpt2'"):
        load_pretrained_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ModelFormatError, match="pickle"):
        load_pretrained_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_pretrained_dir(tmp_path / "missing")


# ----------------------------------------------------------------- strictness
def copy_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_wrong_spec_is_refused_with_tensor_named(saved_nonuniform, tmp_path):
    _, _, out = saved_nonuniform
    d = copy_dir(out, tmp_path / "edited")
    data = json.loads((d / "arch_spec.json").read_text())
    data["layers"][2]["num_q_heads"] = 2  # layer 2 really has 4 query heads
    data["layers"][2]["num_kv_heads"] = 1
    (d / "arch_spec.json").write_text(json.dumps(data))
    with pytest.raises(ModelFormatError) as err:
        load_model(d)
    msg = str(err.value)
    assert "model.safetensors: tensor model.layers.2.self_attn.q_proj.weight has shape (128, 128), " \
           "arch_spec.json expects (64, 128)" in msg


def rewrite_weights(d: Path, edit) -> None:
    tensors = load_file(d / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "edge_runtime_meta.json").unlink()  # the sha256 would (rightly) catch the edit first


def test_missing_tensor_refused(saved_nonuniform, tmp_path):
    d = copy_dir(saved_nonuniform[2], tmp_path / "missing")
    rewrite_weights(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ModelFormatError, match=r"tensor model\.layers\.1\.mlp\.up_proj\.weight is missing"):
        load_model(d)


def test_extra_tensor_refused(saved_nonuniform, tmp_path):
    d = copy_dir(saved_nonuniform[2], tmp_path / "extra")
    rewrite_weights(d, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].clone()))
    with pytest.raises(ModelFormatError, match=r"unexpected tensor lm_head\.weight.*tied"):
        load_model(d)


def test_modified_weights_refused_by_checksum(saved_nonuniform, tmp_path):
    d = copy_dir(saved_nonuniform[2], tmp_path / "tampered")
    tensors = load_file(d / "model.safetensors")
    tensors["model.norm.weight"] += 1
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match="sha256"):
        load_model(d)


def test_missing_files_are_explained(saved_nonuniform, tmp_path):
    with pytest.raises(ModelFormatError, match="load_pretrained_dir"):
        load_model(tmp_path)
    d = copy_dir(saved_nonuniform[2], tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="no model.safetensors"):
        load_model(d)


# ------------------------------------------------------------------ generation
@torch.no_grad()
def greedy_no_cache(model, ids: torch.Tensor, n: int) -> torch.Tensor:
    for _ in range(n):
        nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def test_nonuniform_generate_matches_manual_greedy(saved_nonuniform):
    _, spec, out = saved_nonuniform
    model, _ = load_model(out)
    assert [layer.num_kv_heads for layer in spec.layers] == [2, 1, 2]
    prompt = tokens(6, seed=1)
    generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5,
                               do_sample=False, pad_token_id=0)
    assert generated.shape == (2, 11)
    assert torch.equal(generated, greedy_no_cache(model, prompt, 5))


def test_nonuniform_kv_cache_shapes(saved_nonuniform):
    from transformers import DynamicCache

    model, spec, _ = saved_nonuniform
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(tokens(4), cache=cache, use_cache=True)
    for i, shape in enumerate(spec.kv_cache_shapes(batch=2, past_len=4)):
        assert tuple(cache.layers[i].keys.shape) == shape
        assert tuple(cache.layers[i].values.shape) == shape


def test_first_layer_pruned_round_trip(tmp_path):
    """Layer 0 sets the HF config's widths; a pruned layer 0 must not shrink the others."""
    base = uniform_spec()
    l0 = base.layers[0]
    spec = dataclasses.replace(base, layers=(LayerSpec(2, 1, 64),) + base.layers[1:])
    model = build_model(spec, seed=4)
    loaded, loaded_spec = load_model(save_model(model, tmp_path / "m"))
    assert loaded_spec == spec and spec_from_model(loaded).layers[1] == l0
    assert torch.equal(logits(model), logits(loaded))


def test_llama_with_heads_not_dividing_hidden_size(tmp_path):
    """6 of 8 heads kept: our loader handles it; LlamaConfig's strict validation makes plain
    from_pretrained refuse it (loudly), which is a transformers limitation."""
    spec = preset_spec("llama-4m", vocab_size=VOCAB, num_layers=2, num_q_heads=6, num_kv_heads=3)
    model = build_model(spec, seed=0)
    out = save_model(model, tmp_path / "m")
    loaded, loaded_spec = load_model(out)
    assert loaded_spec == spec
    assert torch.equal(logits(model), logits(loaded))
    with pytest.raises(Exception, match="not a multiple"):
        AutoModelForCausalLM.from_pretrained(out, local_files_only=True)


def test_crash_during_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    import edge_runtime.model.io as mio

    model = build_model(uniform_spec(), seed=0)
    out = save_model(model, tmp_path / "m")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(mio, "_write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(build_model(nonuniform_spec(), seed=1), out)
    with pytest.raises(OSError):
        save_model(model, tmp_path / "new")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old model intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp dirs, no partial "new"
