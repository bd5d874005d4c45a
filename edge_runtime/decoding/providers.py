"""Execution-provider configuration for ONNX Runtime sessions (vehicle side: no torch, no onnx).

    config = ProviderConfig("tensorrt", trt_engine_cache="/var/cache/edge_runtime/trt", threads=2)
    generator = OnnxGenerator("models/tiny/dense.onnx", providers=config)

``ProviderConfig`` is a typed, validated description of where the decoder runs:

    provider           "cpu" | "cuda" | "tensorrt"
    threads            ONNX Runtime intra-op threads (None: ONNX Runtime's default, all cores)
    device_id          CUDA device (cuda and tensorrt)
    trt_fp16           TensorRT may run layers in float16 (``trt_fp16_enable``)
    trt_engine_cache   directory for TensorRT engines (``trt_engine_cache_enable`` + path; without
                       it every session start rebuilds the engine -- minutes on a Jetson)
    trt_profile        ``ShapeProfile``: min / opt / max of batch, new tokens and past length; turned
                       into ``trt_profile_{min,opt,max}_shapes`` for every graph input, with each
                       layer's own KV head count read from the file's arch_spec metadata
    require            what happens when the provider is not available (below)

``ProviderConfig.resolve(model_path)`` returns the ``providers`` argument of
``onnxruntime.InferenceSession`` -- a list of ``(name, options)`` pairs, most preferred first,
CPU always last -- and a list of notes on what was unavailable. TensorRT is followed by CUDA (for
the nodes TensorRT does not take, e.g. the ``MatMulNBits`` of an int4 file) when ONNX Runtime
offers CUDA.

**Unavailable providers** (``onnxruntime.get_available_providers()`` lacks the one asked for):
with ``require=False`` (the default) the session falls back to CPU, the note says which provider
was missing and what this onnxruntime build offers, and ``OnnxGenerator`` turns the note into a
``RuntimeWarning`` (and lists it in ``unavailable_providers``; edge-run records the providers
actually used in its summary). This keeps a bench or a laptop run going. With ``require=True`` --
what a vehicle that needs the GPU to meet its deadline should use -- ``resolve`` raises
``ProviderUnavailableError`` instead, naming the provider, the available ones and the package to
install (``onnxruntime-gpu``; on Jetson the JetPack wheel).

The TensorRT shape profile is the same one ``edge_runtime.export.tensorrt`` gives trtexec, so an
engine built offline and the engine the ONNX Runtime TensorRT provider builds cover the same shapes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contracts.arch_spec import ArchSpec

__all__ = [
    "ORT_NAMES", "PROVIDERS", "PROVIDER_ALIASES", "ProviderConfig", "ProviderUnavailableError", "ShapeProfile",
    "format_shapes", "provider_names", "resolve_providers", "spec_from_onnx",
]

PROVIDERS = ("cpu", "cuda", "tensorrt")
ORT_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
#: Short provider names accepted by ``resolve_providers`` (full ONNX Runtime names work too).
PROVIDER_ALIASES = {**ORT_NAMES, "trt": "TensorrtExecutionProvider"}
_AUTO_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_INSTALL_HINT = {
    "cuda": "install onnxruntime-gpu matching your CUDA (on Jetson: the JetPack onnxruntime-gpu wheel)",
    "tensorrt": "install onnxruntime-gpu built with TensorRT and TensorRT itself (JetPack ships both on Jetson)",
}


class ProviderUnavailableError(RuntimeError):
    """The requested execution provider is not offered by this onnxruntime build (``require=True``)."""


def _check_triple(name: str, triple: Any, minimum: int) -> tuple[int, int, int]:
    if (not isinstance(triple, (tuple, list)) or len(triple) != 3
            or any(isinstance(v, bool) or not isinstance(v, int) for v in triple)):
        raise ValueError(f"ShapeProfile.{name} must be three integers (min, opt, max), got {triple!r}")
    lo, opt, hi = triple
    if not minimum <= lo <= opt <= hi:
        raise ValueError(f"ShapeProfile.{name} must satisfy {minimum} <= min <= opt <= max, got {tuple(triple)}")
    return (lo, opt, hi)


@dataclass(frozen=True)
class ShapeProfile:
    """min / opt / max of the decoder's dynamic dimensions (one TensorRT optimisation profile).

    ``batch``: sequences per run (the runtime runs 1). ``seq``: new tokens per run -- the prompt
    length at prefill, 1 per decode step. ``past``: cached tokens -- 0 at prefill, up to
    prompt + answer while decoding. ``attention_mask`` spans ``past + seq``.

    Defaults: ``opt`` is the decode step (1 new token after ~256 cached), the hot path of
    generation; ``max`` covers a 512-token prompt and 512 cached tokens (the driving prompts are
    ~250 tokens, answers <= 200). The minimum past is 0 because prefill runs with an empty cache.
    """

    batch: tuple[int, int, int] = (1, 1, 1)
    seq: tuple[int, int, int] = (1, 1, 512)
    past: tuple[int, int, int] = (0, 256, 512)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch", _check_triple("batch", self.batch, 1))
        object.__setattr__(self, "seq", _check_triple("seq", self.seq, 1))
        object.__setattr__(self, "past", _check_triple("past", self.past, 0))

    def shapes(self, spec: ArchSpec) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """Input name -> (min shape, opt shape, max shape), every graph input of ``spec``'s decoder
        (layer i's past tensors carry its own KV head count)."""
        if self.past[2] + self.seq[2] > spec.max_position_embeddings:
            raise ValueError(f"ShapeProfile: max past + max seq = {self.past[2] + self.seq[2]} exceeds the model's "
                             f"max_position_embeddings ({spec.max_position_embeddings})")
        out: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
        levels = range(3)
        out["input_ids"] = tuple((self.batch[j], self.seq[j]) for j in levels)  # type: ignore[assignment]
        out["attention_mask"] = tuple((self.batch[j], self.past[j] + self.seq[j]) for j in levels)  # type: ignore[assignment]
        out["position_ids"] = tuple((self.batch[j], self.seq[j]) for j in levels)  # type: ignore[assignment]
        for i, layer in enumerate(spec.layers):
            for kind in ("key", "value"):
                out[f"past_key_values.{i}.{kind}"] = tuple(  # type: ignore[assignment]
                    (self.batch[j], layer.num_kv_heads, self.past[j], spec.head_dim) for j in levels)
        return out


def format_shapes(shapes: dict[str, tuple[tuple[int, ...], ...]], level: int) -> str:
    """``name:d0xd1x...,name:...`` for level 0 (min), 1 (opt) or 2 (max) -- the format of both
    trtexec's ``--minShapes`` and ONNX Runtime's ``trt_profile_min_shapes``."""
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims[level])}" for name, dims in shapes.items())


def resolve_providers(providers: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """-> (providers to use, notes on requested providers that are unavailable).

    ``None`` or ``"cpu"``: CPU only. ``"auto"``: TensorRT > CUDA > CPU, whichever are available.
    Otherwise a name or list of names (aliases ``cpu``, ``cuda``, ``tensorrt``/``trt`` or full
    ONNX Runtime provider names); unavailable ones are dropped and reported, CPU is always the
    last fallback. The plain-name form of ``OnnxGenerator(providers=...)``; :class:`ProviderConfig`
    is the typed one."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is None:
        return ["CPUExecutionProvider"], []
    if isinstance(providers, str):
        if providers.lower() == "auto":
            return [p for p in _AUTO_ORDER if p in available] or ["CPUExecutionProvider"], []
        providers = [providers]
    chosen, notes = [], []
    for name in providers:
        full = PROVIDER_ALIASES.get(str(name).lower(), str(name))
        if full in available:
            if full not in chosen:
                chosen.append(full)
        else:
            notes.append(f"{full} unavailable (onnxruntime {ort.__version__} offers: {', '.join(available)})")
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen, notes


def provider_names(providers: Sequence[Any]) -> list[str]:
    """Names of an InferenceSession ``providers`` list (plain names or (name, options) pairs)."""
    return [p[0] if isinstance(p, tuple) else str(p) for p in providers]


def spec_from_onnx(model_path: str | Path) -> ArchSpec:
    """The architecture spec in an exported file's metadata, read with a CPU session (no onnx package)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if "edge_runtime.arch_spec" not in meta:
        raise ValueError(f"{model_path}: no 'edge_runtime.arch_spec' metadata; re-export the model with edge-export")
    return ArchSpec.from_dict(json.loads(meta["edge_runtime.arch_spec"]))


@dataclass(frozen=True)
class ProviderConfig:
    """Where and how the decoder runs; see the module docstring."""

    provider: str = "cpu"
    threads: int | None = None
    device_id: int = 0
    trt_fp16: bool = True
    trt_engine_cache: str | None = None
    trt_profile: ShapeProfile = field(default_factory=ShapeProfile)
    require: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.provider, str) or self.provider.lower() not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        object.__setattr__(self, "provider", self.provider.lower())
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")
        if isinstance(self.device_id, bool) or not isinstance(self.device_id, int) or self.device_id < 0:
            raise ValueError(f"device_id must be a non-negative integer, got {self.device_id!r}")
        if not isinstance(self.trt_profile, ShapeProfile):
            raise TypeError(f"trt_profile must be a ShapeProfile, got {type(self.trt_profile).__name__}")
        if self.trt_engine_cache is not None and not str(self.trt_engine_cache).strip():
            raise ValueError("trt_engine_cache must be a directory path or None")

    def cuda_options(self) -> dict[str, Any]:
        return {"device_id": self.device_id}

    def tensorrt_options(self, spec: ArchSpec) -> dict[str, Any]:
        """TensorRT provider options, the shape profile built from ``spec`` (per-layer KV heads)."""
        shapes = self.trt_profile.shapes(spec)
        options: dict[str, Any] = {
            "device_id": self.device_id,
            "trt_fp16_enable": bool(self.trt_fp16),
            "trt_profile_min_shapes": format_shapes(shapes, 0),
            "trt_profile_opt_shapes": format_shapes(shapes, 1),
            "trt_profile_max_shapes": format_shapes(shapes, 2),
        }
        if self.trt_engine_cache is not None:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(self.trt_engine_cache),
                           trt_timing_cache_enable=True, trt_timing_cache_path=str(self.trt_engine_cache))
        return options

    def resolve(self, model_path: str | Path | None = None, spec: ArchSpec | None = None,
                available: Sequence[str] | None = None) -> tuple[list[Any], list[str]]:
        """-> (InferenceSession ``providers`` list, notes on unavailable providers).

        ``spec`` (TensorRT only) defaults to the arch_spec in ``model_path``'s metadata.
        ``available`` defaults to ``onnxruntime.get_available_providers()`` (tests pass their own).
        Raises ProviderUnavailableError when the provider is missing and ``require`` is set."""
        if available is None:
            import onnxruntime as ort

            available = ort.get_available_providers()
        available = list(available)
        if self.provider == "cpu":
            return ["CPUExecutionProvider"], []
        full = ORT_NAMES[self.provider]
        if full not in available:
            message = (f"{full} unavailable (this onnxruntime offers: {', '.join(available) or 'none'}; "
                       f"{_INSTALL_HINT[self.provider]})")
            if self.require:
                raise ProviderUnavailableError(f"provider {self.provider!r} required but {message}")
            return ["CPUExecutionProvider"], [message]
        chosen: list[Any] = []
        if self.provider == "tensorrt":
            if spec is None:
                if model_path is None:
                    raise ValueError("ProviderConfig.resolve: the TensorRT profile needs the model's spec "
                                     "(pass model_path or spec)")
                spec = spec_from_onnx(model_path)
            chosen.append((full, self.tensorrt_options(spec)))
        if "CUDAExecutionProvider" in available:
            chosen.append(("CUDAExecutionProvider", self.cuda_options()))
        chosen.append("CPUExecutionProvider")
        return chosen, []
