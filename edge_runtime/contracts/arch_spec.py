"""Per-layer architecture spec of a (possibly pruned, non-uniform) Qwen2/Llama causal LM.

Why this exists: structural pruning gives every decoder layer its own number of query heads,
KV heads and MLP width, while a Hugging Face config holds one number for each. The spec is the
single source of truth for build, load, export and runtime cache shapes, so it is written as a
small versioned JSON next to the weights and every loaded tensor is checked against it.

It is a contract between the training side (build, prune, save, export) and the vehicle side
(the ONNX generator sizes its KV cache from it), so it lives in the torch-free contracts layer.
Conversion to and from Hugging Face configs and models needs transformers and stays in
:mod:`edge_runtime.model.spec`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "VERSION", "FAMILIES", "DEFAULT_ATTENTION_BIAS", "ArchSpecError", "LayerSpec", "ArchSpec"]

FORMAT = "edge_runtime.arch_spec"
VERSION = 1
FAMILIES = ("qwen2", "llama")
#: Whether q/k/v carry a bias when the spec does not say: Qwen2 hard-codes q/k/v bias (and
#: no o_proj bias); Llama's `attention_bias` (q/k/v/o) is off by default.
DEFAULT_ATTENTION_BIAS = {"qwen2": True, "llama": False}


class ArchSpecError(ValueError):
    """An architecture spec is invalid, or a spec file cannot be read."""


def _check_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchSpecError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ArchSpecError(f"{name} must be >= {minimum}, got {value}")


def _check_positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ArchSpecError(f"{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class LayerSpec:
    """Widths of one decoder layer. head_dim and hidden_size live in ArchSpec (never pruned)."""

    num_q_heads: int
    num_kv_heads: int
    intermediate_size: int

    def __post_init__(self) -> None:
        _check_int("num_q_heads", self.num_q_heads)
        _check_int("num_kv_heads", self.num_kv_heads)
        _check_int("intermediate_size", self.intermediate_size)
        if self.num_q_heads % self.num_kv_heads:
            raise ArchSpecError(
                f"num_q_heads ({self.num_q_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads}) so that every KV head serves an integer group of query heads (GQA)")

    @property
    def gqa_ratio(self) -> int:
        """Query heads per KV head (Qwen2/Llama `num_key_value_groups`)."""
        return self.num_q_heads // self.num_kv_heads

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


_LAYER_FIELDS = tuple(f.name for f in dataclasses.fields(LayerSpec))


@dataclass(frozen=True)
class ArchSpec:
    """Whole-model architecture: family-level constants plus one LayerSpec per decoder layer.

    `attention_bias=None` means the family default (Qwen2: q/k/v bias; Llama: none). For Llama
    `attention_bias=True` adds a bias to q/k/v *and* o_proj (that is what LlamaAttention does);
    Qwen2 modeling code always builds q/k/v bias, so Qwen2 requires `attention_bias=True`.
    `rope_parameters=None` means plain RoPE with `rope_theta`; otherwise it is the HF
    `rope_parameters` dict (e.g. Llama-3 scaling), kept verbatim.
    """

    family: str
    hidden_size: int
    head_dim: int
    vocab_size: int
    layers: tuple[LayerSpec, ...]
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = True
    hidden_act: str = "silu"
    attention_bias: bool | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    rope_parameters: Mapping[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ArchSpecError(f"unknown family {self.family!r}; known families: {', '.join(FAMILIES)}")
        _check_int("hidden_size", self.hidden_size)
        _check_int("head_dim", self.head_dim)
        if self.head_dim % 2:
            raise ArchSpecError(f"head_dim must be even (rotary embedding), got {self.head_dim}")
        _check_int("vocab_size", self.vocab_size)
        _check_int("max_position_embeddings", self.max_position_embeddings)
        _check_positive_float("rms_norm_eps", self.rms_norm_eps)
        _check_positive_float("rope_theta", self.rope_theta)
        if not isinstance(self.hidden_act, str) or not self.hidden_act:
            raise ArchSpecError(f"hidden_act must be a non-empty string, got {self.hidden_act!r}")
        layers = tuple(self.layers)
        if not layers:
            raise ArchSpecError("layers must hold at least one LayerSpec")
        for i, layer in enumerate(layers):
            if not isinstance(layer, LayerSpec):
                raise ArchSpecError(f"layers[{i}] must be a LayerSpec, got {type(layer).__name__}")
        object.__setattr__(self, "layers", layers)
        bias = DEFAULT_ATTENTION_BIAS[self.family] if self.attention_bias is None else self.attention_bias
        if not isinstance(bias, bool):
            raise ArchSpecError(f"attention_bias must be a bool or None, got {bias!r}")
        if self.family == "qwen2" and not bias:
            raise ArchSpecError("qwen2 always has q/k/v bias (the HF modeling code hard-codes it); "
                                "use attention_bias=True or None")
        object.__setattr__(self, "attention_bias", bias)
        if not isinstance(self.tie_word_embeddings, bool):
            raise ArchSpecError(f"tie_word_embeddings must be a bool, got {self.tie_word_embeddings!r}")
        for name in ("bos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, minimum=0)
        eos = self.eos_token_id
        if isinstance(eos, (list, tuple)):
            eos = tuple(eos)
            for j, e in enumerate(eos):
                _check_int(f"eos_token_id[{j}]", e, minimum=0)
            object.__setattr__(self, "eos_token_id", eos)
        elif eos is not None:
            _check_int("eos_token_id", eos, minimum=0)
        if self.rope_parameters is not None:
            if not isinstance(self.rope_parameters, Mapping):
                raise ArchSpecError(f"rope_parameters must be a dict or None, got {self.rope_parameters!r}")
            object.__setattr__(self, "rope_parameters", dict(self.rope_parameters))

    # ---------------------------------------------------------------- helpers
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_uniform(self) -> bool:
        """True when every layer has the same widths (plain HF configs can describe the model)."""
        return all(layer == self.layers[0] for layer in self.layers)

    @property
    def q_bias(self) -> bool:
        """q/k/v projections carry a bias."""
        return bool(self.attention_bias)

    @property
    def o_bias(self) -> bool:
        """o_proj carries a bias (Llama with attention_bias only)."""
        return self.family == "llama" and bool(self.attention_bias)

    def kv_cache_shapes(self, batch: int, past_len: int) -> list[tuple[int, int, int, int]]:
        """Per-layer key (= value) cache shape [batch, kv_heads_i, past_len, head_dim]."""
        return [(batch, layer.num_kv_heads, past_len, self.head_dim) for layer in self.layers]

    def expected_tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every stored tensor name (HF naming) and its shape; Linear weights are (out, in).

        `lm_head.weight` is listed only when embeddings are untied (tied models store it once).
        """
        h, d = self.hidden_size, self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h)}
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            q, kv, inter = layer.num_q_heads * d, layer.num_kv_heads * d, layer.intermediate_size
            shapes[p + "self_attn.q_proj.weight"] = (q, h)
            shapes[p + "self_attn.k_proj.weight"] = (kv, h)
            shapes[p + "self_attn.v_proj.weight"] = (kv, h)
            if self.q_bias:
                shapes[p + "self_attn.q_proj.bias"] = (q,)
                shapes[p + "self_attn.k_proj.bias"] = (kv,)
                shapes[p + "self_attn.v_proj.bias"] = (kv,)
            shapes[p + "self_attn.o_proj.weight"] = (h, q)
            if self.o_bias:
                shapes[p + "self_attn.o_proj.bias"] = (h,)
            shapes[p + "mlp.gate_proj.weight"] = (inter, h)
            shapes[p + "mlp.up_proj.weight"] = (inter, h)
            shapes[p + "mlp.down_proj.weight"] = (h, inter)
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes["model.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes

    def num_parameters(self) -> int:
        """Exact parameter count of the built model (tied embeddings counted once)."""
        total = 0
        for shape in self.expected_tensor_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    # ------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "version": VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "layers":
                value = [layer.to_dict() for layer in value]
            elif f.name == "eos_token_id" and isinstance(value, tuple):
                value = list(value)
            d[f.name] = value
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | os.PathLike | None = None) -> ArchSpec:
        """Inverse of to_dict. Errors name `source` (the file) and the offending field."""
        where = f"{source}: " if source is not None else ""
        if not isinstance(data, Mapping):
            raise ArchSpecError(f"{where}expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ArchSpecError(f"{where}field 'format' must be {FORMAT!r}, got {data.get('format')!r}")
        if data.get("version") != VERSION:
            raise ArchSpecError(f"{where}unsupported field 'version' {data.get('version')!r}; this edge_runtime "
                                f"reads version {VERSION} (upgrade edge_runtime or re-export the model)")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields) - {"format", "version"})
        if unknown:
            raise ArchSpecError(f"{where}unknown field(s) {unknown}")
        kwargs: dict[str, Any] = {}
        for name, f in fields.items():
            if name in data:
                kwargs[name] = data[name]
            elif f.default is dataclasses.MISSING:
                raise ArchSpecError(f"{where}missing required field '{name}'")
        layers = kwargs["layers"]
        if not isinstance(layers, list):
            raise ArchSpecError(f"{where}field 'layers' must be a list, got {type(layers).__name__}")
        parsed = []
        for i, layer in enumerate(layers):
            if not isinstance(layer, Mapping):
                raise ArchSpecError(f"{where}field 'layers[{i}]' must be an object")
            for key in _LAYER_FIELDS:
                if key not in layer:
                    raise ArchSpecError(f"{where}missing field 'layers[{i}].{key}'")
            extra = sorted(set(layer) - set(_LAYER_FIELDS))
            if extra:
                raise ArchSpecError(f"{where}unknown field(s) in 'layers[{i}]': {extra}")
            try:
                parsed.append(LayerSpec(**{k: layer[k] for k in _LAYER_FIELDS}))
            except ArchSpecError as exc:
                raise ArchSpecError(f"{where}field 'layers[{i}]': {exc}") from None
        kwargs["layers"] = tuple(parsed)
        try:
            return cls(**kwargs)
        except ArchSpecError as exc:
            raise ArchSpecError(f"{where}{exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically (temp file + os.replace)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ArchSpec:
        path = Path(path)
        if not path.is_file():
            raise ArchSpecError(f"{path}: architecture spec not found (it is written by "
                                "edge_runtime.model.io.save_model next to the weights)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ArchSpecError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(data, source=path)
