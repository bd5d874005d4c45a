"""Quantized variants of an exported decoder: int8 and int4 weights, with ONNX Runtime's own tools.

    quantize_onnx("dense.onnx", "dense-int8.onnx", QuantizeConfig("int8"))
    edge-export models/dense -o models/dense-int4.onnx --quantize int4

Only the projection MatMuls are quantized: every ``MatMul`` whose second input is a 2-D float
initializer, i.e. q/k/v/o, gate/up/down and an untied LM head (in the shared-KV-cache graph q/k/v and
gate/up are packed into one MatMul each; per-channel int8 scales and K-blocked int4 scales make
the packing irrelevant to the result). A tied LM head reads ``Transpose`` of the embedding table in
the float file (stored once, ``export.tied_head``); before quantizing it gets its own weight again
(``unshare_tied_table``), so the largest MatMul of a vocabulary-heavy model is quantized too and
decoding never reads the float table for the head.

**The embedding table** (MatMulNBits methods, ``quantize_embedding=True``, the default): the
embedding ``Gather`` becomes ``GatherBlockQuantized`` at the same bits and block size
(``export.quantized_embedding``). In a tied model it reads the LM head's quantized weight, so the
table is stored once, quantized; an untied model's table gets its own quantized copy. With
``quantize_embedding=False`` (and always for int8 ``dynamic``) the Gather keeps a float32 table, and a
tied model then stores the table twice (float for the Gather, quantized for the head).

The attention score MatMuls (two activations), RMSNorm, RoPE and softmax stay float32, and so do the
graph's inputs, outputs and KV cache (``edge_runtime.dtype`` stays ``"fp32"``: the runtime feeds
and reads the same tensors as for the fp32 file).

**int8** (``kind="int8"``), two methods:

* ``"weight-only"`` (default, :data:`DEFAULT_INT8_METHOD`) -- ``MatMulNBits`` with 8-bit weights
  (block-wise, ``block_size``), activations stay float32. Its logits stay far closer to fp32 than
  the dynamic method's, and it is the method that passes the parity bound of ``export.parity`` on
  every shipped model, hence the default here and in ``edge-export``. The price is speed on CPU:
  ONNX Runtime's 8-bit kernel computes in float32 at the default ``accuracy_level`` and decodes
  slower than the fp32 graph unless ``accuracy_level=4`` (int8 compute, the default here) is set. Needs the
  ``com.microsoft`` contrib op (ONNX Runtime CPU/CUDA, not plain ONNX).
* ``"dynamic"`` -- ``onnxruntime.quantization.quantize_dynamic``: weights int8 (symmetric, per
  output channel by default), activations quantized to uint8 per tensor at run time
  (``DynamicQuantizeLinear`` + ``MatMulInteger``; standard ONNX ops, fast on CPU). The per-tensor
  activation quantization dominates its error, so greedy answers drift more than with
  weight-only, and on some shipped models the largest logit moves past the parity bound.
  Per-channel weight scales are the default because they keep more answers identical than
  per-tensor ones at the same logit error.

**int4** (``kind="int4"``) -- weight-only ``MatMulNBits`` via
``onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer`` (RTN, 4-bit, one scale
per ``block_size`` weights along K, symmetric by default). ``block_size`` must be one of
16/32/64/128/256 (the MLAS kernels' sizes; anything else fails inside ONNX Runtime). Any K works:
ONNX Runtime zero-pads the last block of a layer whose K is not a multiple of ``block_size`` (a
pruned MLP width such as 200 with blocks of 32, or an o_proj K of 64 for 2 heads of 32) -- the
result is correct (tested) and the padding is listed in ``QuantizeReport.padded``. The tiny
``qwen2-1m`` shapes (hidden 128, K in {128, 384}) divide into blocks of 32 exactly.

``symmetric=True`` is the default for the MatMulNBits kernels because asymmetric int4 scored
worse on the dense model the quantizer was tuned on.

Every measurement behind these choices -- sizes, max |logit diff| against the parity bound,
identical answers, token agreement, held-out scores of each variant and decode speed, per model
and with the model commit they were taken on -- is in ``bench/results/quantization.md``.

The quantizers keep the source file's ``metadata_props`` in ONNX Runtime 1.32, but that is not
promised anywhere, so the output's metadata is rewritten from the source: every key of the
source file, plus ``edge_runtime.quantization`` (JSON: ``kind``, ``method``, the settings, the
quantized MatMul count and the onnxruntime version). A file without that key is unquantized.
The output is written atomically (temp file next to it, then ``os.replace``).

This module imports onnx and onnxruntime (training side: the quantizer needs ``onnx`` and, for
MatMulNBits, ``onnx_ir``), never torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_INT8_METHOD", "INT8_METHODS", "NBITS_BLOCK_SIZES", "QUANTIZATIONS", "QUANTIZATION_KEY", "QuantizeConfig",
    "QuantizeError", "QuantizeReport", "quantization_of", "quantize_onnx", "weight_matmuls",
]

QUANTIZATIONS = ("int8", "int4")
INT8_METHODS = ("dynamic", "weight-only")
#: weight-only passes the parity bound on every shipped model; dynamic does not (module docstring).
#: ``edge-export --int8-method`` takes its default from here.
DEFAULT_INT8_METHOD = "weight-only"
#: Block sizes the MLAS MatMulNBits kernels implement.
NBITS_BLOCK_SIZES = (16, 32, 64, 128, 256)
META = "edge_runtime."
QUANTIZATION_KEY = META + "quantization"


DEFAULT_ACCURACY_LEVEL = 4  # QuantizeConfig's and edge-export's default (int8 compute in MatMulNBits)


class QuantizeError(ValueError):
    """The file cannot be quantized as asked (bad settings, not an fp32 edge_runtime export, ...)."""


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize. ``kind``: "int8" | "int4". ``int8_method``: "weight-only" (default) |
    "dynamic" (int8 only). ``per_channel``: per-output-channel int8 weight scales (int8 dynamic only).
    ``block_size`` / ``symmetric`` / ``accuracy_level``: MatMulNBits settings (int4 and int8
    weight-only); ``accuracy_level`` 4 (:data:`DEFAULT_ACCURACY_LEVEL`) multiplies in int8 with
    the activations quantized per block -- the speed the MLAS kernels were written for on CPU; None
    or 0 leave ONNX Runtime's float32 compute (several times slower per token on the CPUs measured,
    bench/results/compare_throughput; GPU execution providers ignore the setting). ``quantize_embedding``: the embedding
    Gather reads a quantized table too (MatMulNBits methods; module docstring). ``head_bits``: the
    LM head's (and so a tied embedding's) bit width when it differs from the projections' -- 8 with
    int4 keeps the 49152-wide vocabulary projection, the error every logit shares, at 8 bits.
    ``fine_block_layers``: decoder layers whose projections get the smaller ``fine_block_size``
    (twice the scales at 16 vs 32) while every other projection keeps ``block_size``: a model that
    fails parity at the coarse size only because of a few sensitive layers then keeps most of the
    coarse size's speed (``bench/results/compare_throughput_prefix``: a block size of 16 throughout
    cost pruned50 most of its decode speed-up)."""

    kind: str
    int8_method: str = DEFAULT_INT8_METHOD
    per_channel: bool = True
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int | None = 4  # DEFAULT_ACCURACY_LEVEL
    quantize_embedding: bool = True
    head_bits: int | None = None
    fine_block_layers: tuple[int, ...] = ()
    fine_block_size: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "fine_block_layers", tuple(sorted(set(self.fine_block_layers))))
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in self.fine_block_layers):
            raise QuantizeError(f"fine_block_layers must be layer indices (ints >= 0), got {self.fine_block_layers!r}")
        if self.fine_block_layers and (self.method != "matmul_nbits" or self.fine_block_size not in NBITS_BLOCK_SIZES
                                       or self.fine_block_size >= self.block_size):
            raise QuantizeError(f"fine_block_layers need a MatMulNBits method and a fine_block_size in "
                                f"{', '.join(map(str, NBITS_BLOCK_SIZES))} smaller than block_size {self.block_size}, "
                                f"got {self.fine_block_size!r}")
        if self.kind not in QUANTIZATIONS:
            raise QuantizeError(f"unknown quantization {self.kind!r}; use one of {', '.join(QUANTIZATIONS)}")
        if self.int8_method not in INT8_METHODS:
            raise QuantizeError(f"unknown int8 method {self.int8_method!r}; use one of {', '.join(INT8_METHODS)}")
        if isinstance(self.block_size, bool) or self.block_size not in NBITS_BLOCK_SIZES:
            raise QuantizeError(f"block_size must be one of {', '.join(map(str, NBITS_BLOCK_SIZES))} (the sizes "
                                f"ONNX Runtime's MatMulNBits kernels implement), got {self.block_size!r}")
        if self.head_bits is not None and (self.head_bits not in (4, 8) or self.method != "matmul_nbits"):
            raise QuantizeError(f"head_bits must be 4 or 8 with a MatMulNBits method (int4, int8 weight-only), "
                                f"got {self.head_bits!r} for {self.kind} {self.int8_method}")
        if self.accuracy_level is not None and self.accuracy_level not in (0, 1, 2, 3, 4):
            raise QuantizeError(f"accuracy_level must be None or 0..4, got {self.accuracy_level!r}")

    @property
    def method(self) -> str:
        """"dynamic" (quantize_dynamic) or "matmul_nbits" (MatMulNBitsQuantizer)."""
        return "dynamic" if self.kind == "int8" and self.int8_method == "dynamic" else "matmul_nbits"

    @property
    def bits(self) -> int:
        return 8 if self.kind == "int8" else 4

    def describe(self) -> dict[str, Any]:
        """The settings that matter for this kind/method (what goes into the metadata)."""
        out: dict[str, Any] = {"kind": self.kind, "method": self.method, "bits": self.bits}
        if self.method == "dynamic":
            out.update(per_channel=self.per_channel, weights="int8 symmetric", activations="uint8 per tensor, dynamic")
        else:
            out.update(block_size=self.block_size, symmetric=self.symmetric, accuracy_level=self.accuracy_level,
                       activations="float32" if self.accuracy_level != 4 else "int8 (accuracy_level 4)",
                       quantize_embedding=self.quantize_embedding, head_bits=self.head_bits or self.bits)
            if self.fine_block_layers:
                out.update(fine_block_layers=list(self.fine_block_layers), fine_block_size=self.fine_block_size)
        return out


@dataclass
class QuantizeReport:
    config: QuantizeConfig
    quantized: list[str]                       # MatMul node names whose weights were quantized
    src_bytes: int
    out_bytes: int
    padded: list[tuple[str, int, int]] = field(default_factory=list)  # (node, K, padded K) -- MatMulNBits only
    embeddings: list[dict[str, Any]] = field(default_factory=list)  # quantized embedding Gathers (EmbeddingQuantization)
    metadata: dict[str, Any] = field(default_factory=dict)           # the edge_runtime.quantization record

    @property
    def ratio(self) -> float:
        return self.out_bytes / self.src_bytes if self.src_bytes else float("nan")

    def summary(self) -> str:
        pad = f", {len(self.padded)} padded to a block multiple" if self.padded else ""
        emb = "".join(f", embedding {e['table']} {'shared with the LM head' if e['shared'] else 'own table'}"
                      for e in self.embeddings)
        return (f"{self.config.kind} ({self.config.method}): {len(self.quantized)} MatMul weights quantized{pad}{emb}; "
                f"{self.src_bytes / 2**20:.2f} -> {self.out_bytes / 2**20:.2f} MiB ({100 * self.ratio:.0f}%)")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = asdict(self.config)
        return d


_LAYER_PATTERNS = (re.compile(r"^l(\d+)\."), re.compile(r"layers\.(\d+)[./]"))


def layer_of(node_name: str) -> int | None:
    """The decoder layer a MatMul belongs to, from its node name: ``l3.qkv_nb/MatMul`` (the shared-cache
    graph) or ``/model/layers.3/mlp/...`` (the traced graph); None for the LM head and anything else."""
    for pattern in _LAYER_PATTERNS:
        m = pattern.search(node_name)
        if m:
            return int(m.group(1))
    return None


def weight_matmuls(model) -> list[tuple[str, int, int]]:
    """(node name, K, N) of every MatMul whose second input is a 2-D float initializer."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) < 2:
            continue
        init = inits.get(node.input[1])
        if init is None or len(init.dims) != 2 or init.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            continue
        out.append((node.name, int(init.dims[0]), int(init.dims[1])))
    return out


def quantization_of(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The quantization record of a file's metadata (None: unquantized)."""
    raw = metadata.get(QUANTIZATION_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise QuantizeError(f"metadata field '{QUANTIZATION_KEY}' is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("kind") not in QUANTIZATIONS:
        raise QuantizeError(f"metadata field '{QUANTIZATION_KEY}' has no known 'kind': {raw[:80]!r}")
    return record


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizers log every node at INFO (and warn about pre-processing): silence
    records below ERROR while they run, restoring the previous global setting afterwards."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _run_dynamic(src: Path, dst: Path, config: QuantizeConfig, nodes: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], nodes_to_quantize=nodes,
                     per_channel=config.per_channel, reduce_range=False, weight_type=QuantType.QInt8,
                     extra_options={"MatMulConstBOnly": True})


def _run_nbits(model, dst: Path, config: QuantizeConfig, nodes: list[str],
               head_outputs: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """MatMulNBits-quantize ``nodes`` of ``model`` into ``dst``, then (``config.quantize_embedding``)
    the embedding Gathers; ``head_outputs``: ``unshare_tied_table``'s result. Returns the embedding
    records."""
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:  # onnx_ir is a separate package
        raise QuantizeError(f"MatMulNBits quantization needs {exc.name or 'a missing package'} "
                            f"(pip install onnx-ir; it is in edge_runtime's 'train' extra)") from None
    # the LM head (the MatMul that writes the graph's logits) may get its own bit width: one pass for
    # the projections without it, one for the head; MatMulNBitsQuantizer quantizes every MatMul that
    # is not excluded, so the passes exclude rather than include
    outputs = {o.name for o in model.graph.output}
    heads = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.output and n.output[0] in outputs
             and n.name in nodes]
    head_bits = config.head_bits or config.bits
    fine = {n for n in nodes if n not in heads and layer_of(n) in config.fine_block_layers}
    passes = [(config.bits, config.block_size, [n for n in nodes if n not in heads and n not in fine])]
    if fine:
        passes.append((config.bits, config.fine_block_size, sorted(fine)))
    if heads:
        passes.append((head_bits, config.block_size, heads))
    for bits, block_size, include in passes:
        if not include:
            continue
        skip = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in include]
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size,
                                         is_symmetric=config.symmetric, accuracy_level=config.accuracy_level,
                                         nodes_to_exclude=skip, op_types_to_quantize=("MatMul",))
        quantizer.process()
        model = quantizer.model.model
    embeddings: list[dict[str, Any]] = []
    if config.quantize_embedding:
        from .quantized_embedding import quantize_embedding_gathers

        # the embedding shares the (tied) head's table, so it has the head's bit width
        done = quantize_embedding_gathers(quantizer.model.model, head_outputs or {}, bits=head_bits,
                                          block_size=config.block_size, symmetric=config.symmetric,
                                          accuracy_level=config.accuracy_level)
        embeddings = [asdict(e) for e in done]
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)
    return embeddings


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, config: QuantizeConfig | str) -> QuantizeReport:
    """Quantize the fp32 export ``src`` (written by ``export_onnx``) into ``dst``; see the module
    docstring. ``config`` may be a kind ("int8" / "int4") for the defaults. Does not check
    parity: callers do (``edge_runtime.export.parity.check_parity``; ``edge-export --quantize``
    always does)."""
    import onnx
    import onnxruntime as ort

    from .onnx_export import save_with_metadata

    if isinstance(config, str):
        config = QuantizeConfig(config)
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise QuantizeError(f"{src}: ONNX file not found")
    model = onnx.load(str(src))
    from .tied_head import unshare_tied_table

    # a tied LM head reads Transpose(embedding) in the float file; give it its own weight here so
    # that the quantizer quantizes it (decoding reads the 4/8-bit copy, not the float table)
    head_outputs = unshare_tied_table(model)
    untied_head = bool(head_outputs)
    props = {p.key: p.value for p in model.metadata_props}
    if META + "arch_spec" not in props:
        raise QuantizeError(f"{src}: not an edge_runtime export (no '{META}arch_spec' metadata); export it with "
                            "edge-export first")
    if QUANTIZATION_KEY in props:
        raise QuantizeError(f"{src}: already quantized ({props[QUANTIZATION_KEY][:60]}); quantize the fp32 export")
    if props.get(META + "dtype") != "fp32":
        raise QuantizeError(f"{src}: graph dtype is {props.get(META + 'dtype')!r}; quantization starts from the fp32 "
                            "export (edge-export --dtype fp32 --quantize ...)")
    matmuls = weight_matmuls(model)
    if not matmuls:
        raise QuantizeError(f"{src}: no MatMul with a constant 2-D weight to quantize")
    names = [name for name, _, _ in matmuls]
    layers = sorted({i for i in map(layer_of, names) if i is not None})
    missing = set(config.fine_block_layers) - set(layers)
    if missing:
        span = f"{layers[0]}..{layers[-1]}" if layers else "none found"
        raise QuantizeError(f"fine_block_layers {sorted(missing)} are not layers of this model (its projections "
                            f"are in layers {span})")
    padded = []
    if config.method == "matmul_nbits":
        bs = config.block_size
        padded = [(name, k, -(-k // bs) * bs) for name, k, _ in matmuls if k % bs]

    embeddings: list[dict[str, Any]] = []
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tempfile.TemporaryDirectory(prefix=f".{dst.name}.q-", dir=dst.parent) as td:
            raw = Path(td) / "quantized.onnx"
            try:
                with _quiet():
                    if config.method == "dynamic":
                        dyn_src = src
                        if untied_head:  # quantize_dynamic reads a file: the one with the head's own weight
                            dyn_src = Path(td) / "untied_head.onnx"
                            onnx.save(model, str(dyn_src))
                        _run_dynamic(dyn_src, raw, config, names)
                    else:
                        embeddings = _run_nbits(model, raw, config, names, head_outputs)
            except QuantizeError:
                raise
            except Exception as exc:  # noqa: BLE001 -- ORT's quantizers raise assorted types
                msg = " ".join(str(exc).split())[:240]
                raise QuantizeError(f"{src}: {config.kind} quantization failed in onnxruntime {ort.__version__} "
                                    f"({type(exc).__name__}: {msg}); weight shapes (name, K, N): {matmuls[:3]}...") from None
            out = onnx.load(str(raw))
        out_ops = [n.op_type for n in out.graph.node]
        quantized_ops = out_ops.count("MatMulInteger") if config.method == "dynamic" else out_ops.count("MatMulNBits")
        if quantized_ops != len(names):
            raise QuantizeError(f"{src}: expected {len(names)} quantized MatMuls, the {config.method} quantizer made "
                                f"{quantized_ops}")
        record = {**config.describe(), "quantized_matmuls": len(names), "onnxruntime": ort.__version__}
        if config.method == "dynamic":
            record["embedding"] = "float32"
        else:
            record["embedding"] = ("float32" if not embeddings else
                                   f"{config.head_bits or config.bits}-bit GatherBlockQuantized, "
                                   + ("shared with the LM head" if all(e["shared"] for e in embeddings) else "own table"))
        save_with_metadata(out, {**props, QUANTIZATION_KEY: json.dumps(record)}, tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return QuantizeReport(config=config, quantized=names, src_bytes=src.stat().st_size, out_bytes=dst.stat().st_size,
                          padded=padded, embeddings=embeddings, metadata=record)
