"""ArchSpec: validation, JSON round trip, parameter counts and HF-config conversion."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from edge_runtime.model.build import PRESETS, build_model, preset_spec, resize_layer
from edge_runtime.contracts.arch_spec import ArchSpec, ArchSpecError, LayerSpec
from edge_runtime.model.spec import spec_from_hf_config, spec_from_model, to_hf_config


def nonuniform(base: ArchSpec) -> ArchSpec:
    """Layer 1 with half the query and KV heads and a 24-channel-smaller MLP."""
    l0 = base.layers[0]
    small = LayerSpec(l0.num_q_heads // 2, l0.num_kv_heads // 2, l0.intermediate_size - 24)
    return dataclasses.replace(base, layers=(l0, small) + base.layers[2:])


def tiny(family: str = "qwen2", **kw) -> ArchSpec:
    return preset_spec("qwen2-1m" if family == "qwen2" else "llama-4m", vocab_size=256, num_layers=3, **kw)


# ---------------------------------------------------------------- validation
def test_q_heads_must_be_multiple_of_kv_heads():
    with pytest.raises(ArchSpecError, match="multiple of num_kv_heads"):
        LayerSpec(num_q_heads=6, num_kv_heads=4, intermediate_size=64)


@pytest.mark.parametrize("kwargs", [{"num_q_heads": 0, "num_kv_heads": 1, "intermediate_size": 8},
                                    {"num_q_heads": 2, "num_kv_heads": 1, "intermediate_size": -1},
                                    {"num_q_heads": 2.0, "num_kv_heads": 1, "intermediate_size": 8}])
def test_layer_widths_positive_integers(kwargs):
    with pytest.raises(ArchSpecError):
        LayerSpec(**kwargs)


def test_unknown_family():
    with pytest.raises(ArchSpecError, match="unknown family 'gpt2'"):
        dataclasses.replace(tiny(), family="gpt2")


def test_qwen2_requires_qkv_bias():
    with pytest.raises(ArchSpecError, match="bias"):
        dataclasses.replace(tiny(), attention_bias=False)


def test_attention_bias_defaults_per_family():
    assert tiny("qwen2").attention_bias is True
    assert tiny("llama").attention_bias is False


# --------------------------------------------------------------------- JSON
@pytest.mark.parametrize("uniform", [True, False])
def test_json_round_trip(tmp_path, uniform):
    spec = tiny() if uniform else nonuniform(tiny())
    spec = dataclasses.replace(spec, eos_token_id=(1, 2), bos_token_id=0)
    assert spec.is_uniform is uniform
    path = spec.save(tmp_path / "arch_spec.json")
    data = json.loads(path.read_text())
    assert data["format"] == "edge_runtime.arch_spec" and data["version"] == 1
    assert ArchSpec.load(path) == spec
    assert ArchSpec.from_dict(spec.to_dict()) == spec


def test_bad_version_names_file_and_field(tmp_path):
    path = tmp_path / "arch_spec.json"
    data = tiny().to_dict()
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ArchSpecError, match=r"arch_spec\.json.*'version'"):
        ArchSpec.load(path)


def test_missing_field_names_file_and_field(tmp_path):
    path = tmp_path / "arch_spec.json"
    data = tiny().to_dict()
    del data["head_dim"]
    path.write_text(json.dumps(data))
    with pytest.raises(ArchSpecError, match=r"arch_spec\.json.*'head_dim'"):
        ArchSpec.load(path)
    data = tiny().to_dict()
    del data["layers"][1]["num_kv_heads"]
    path.write_text(json.dumps(data))
    with pytest.raises(ArchSpecError, match=r"layers\[1\]\.num_kv_heads"):
        ArchSpec.load(path)


def test_invalid_layer_in_file_is_named(tmp_path):
    path = tmp_path / "arch_spec.json"
    data = tiny().to_dict()
    data["layers"][2]["num_q_heads"] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(ArchSpecError, match=r"arch_spec\.json.*layers\[2\].*multiple"):
        ArchSpec.load(path)


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ArchSpecError, match="not found"):
        ArchSpec.load(tmp_path / "nope.json")


def test_spec_module_imports_without_torch():
    code = ("import sys; import edge_runtime.contracts.arch_spec, edge_runtime.model.spec, edge_runtime.model; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------ param counts
@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("uniform", [True, False])
def test_num_parameters_matches_built_model(family, tied, uniform):
    spec = dataclasses.replace(tiny(family), tie_word_embeddings=tied)
    if family == "llama":
        spec = dataclasses.replace(spec, attention_bias=True)  # exercise the o_proj bias too
    if not uniform:
        spec = nonuniform(spec)
    model = build_model(spec, seed=1)
    assert spec.num_parameters() == sum(p.numel() for p in model.parameters())
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    if tied:
        shapes.pop("lm_head.weight")
    assert shapes == spec.expected_tensor_shapes()
    assert (model.lm_head.weight is model.model.embed_tokens.weight) is tied


def test_presets_sizes():
    counts = {name: spec.num_parameters() for name, spec in PRESETS.items()}
    assert 0.8e6 < counts["qwen2-1m"] < 1.5e6
    assert 20e6 < counts["qwen2-30m"] < 35e6
    for spec in PRESETS.values():
        assert spec.vocab_size == 2048 and spec.layers[0].gqa_ratio == 2
    assert preset_spec("qwen2-4m", vocab_size=512).vocab_size == 512
    with pytest.raises(KeyError, match="available"):
        preset_spec("gpt-17b")


# ----------------------------------------------------------- HF config / model
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_hf_config_round_trip(family):
    spec = tiny(family)
    config = to_hf_config(spec)
    assert config.head_dim == spec.head_dim
    assert spec_from_hf_config(config) == spec


def test_llama_heads_not_dividing_hidden_size():
    """A pruned llama may keep 6 of 8 heads: hidden 256 % 6 != 0, LlamaConfig would refuse it."""
    spec = preset_spec("llama-4m", vocab_size=128, num_layers=2, num_q_heads=6, num_kv_heads=3)
    model = build_model(spec)
    assert spec_from_model(model) == spec
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 128)


def test_nonuniform_hf_config_uses_first_layer():
    spec = nonuniform(tiny())
    config = to_hf_config(spec)
    assert config.num_attention_heads == spec.layers[0].num_q_heads
    assert config.intermediate_size == spec.layers[0].intermediate_size


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_spec_from_model_recovers_nonuniform(family):
    spec = nonuniform(tiny(family))
    assert spec_from_model(build_model(spec)) == spec


def test_resize_layer_then_spec_from_model():
    spec = tiny()
    model = build_model(spec)
    new = LayerSpec(2, 2, 200)
    resize_layer(model, 2, new)
    assert spec_from_model(model).layers[2] == new
    assert model.model.layers[2].self_attn.num_key_value_groups == 1


def test_spec_from_model_detects_inconsistent_layer():
    model = build_model(tiny())
    attn = model.model.layers[0].self_attn
    attn.o_proj = torch.nn.Linear(attn.o_proj.in_features - 32, attn.o_proj.out_features, bias=False)
    with pytest.raises(ArchSpecError, match=r"model\.layers\.0\.self_attn\.o_proj\.in_features"):
        spec_from_model(model)


def test_build_is_seeded():
    spec = tiny()
    torch.manual_seed(123)
    a = build_model(spec, seed=7)
    torch.manual_seed(456)
    b = build_model(spec, seed=7)
    c = build_model(spec, seed=8)
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)


def test_build_dtype_and_config():
    model = build_model(tiny(), dtype=torch.bfloat16)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.config.use_cache is True
    assert model.config._attn_implementation == "sdpa"
