"""Build a TensorRT engine from an exported decoder (``deploy/build_trt_engine.py`` is its CLI).

    python deploy/build_trt_engine.py models/pruned.onnx -o models/pruned.engine [--dry-run]

Two builders, tried in this order:

1. **trtexec** (``--trtexec PATH``, else ``trtexec`` on PATH, else JetPack's
   ``/usr/src/tensorrt/bin/trtexec``), run as a subprocess with one explicit optimisation
   profile: ``--minShapes/--optShapes/--maxShapes`` for ``input_ids``, ``attention_mask``,
   ``position_ids`` and every ``past_key_values.{i}.key|value`` -- layer i with its own KV head
   count, read from the file's ``edge_runtime.arch_spec`` metadata (a pruned model has one per
   layer) -- plus ``--fp16`` (unless ``fp16=False``) and ``--saveEngine``;
2. the **TensorRT Python API** (``import tensorrt``): the same profile through
   ``builder.create_optimization_profile()``.

Neither available: ``TensorRTUnavailable`` ("TensorRT not available: ..."), which the CLI prints
as one line with exit code 3 -- never a traceback.

The profile is ``edge_runtime.decoding.providers.ShapeProfile`` -- the same one the ONNX Runtime
TensorRT provider gets from ``ProviderConfig`` -- so the offline engine (for TensorRT-native
deployment and ``trtexec --loadEngine`` latency runs) and the runtime's cached engine cover the
same shapes. Defaults: batch 1; new tokens 1 / 1 / 512 (min / opt / max); past 0 / 256 / 512.
``opt`` is the decode step, the hot path. The minimum past is 0 (prefill with an empty cache):
TensorRT accepts zero-sized dimensions in a profile, but this was not verified on a device here.

Only unquantized files (fp32 / fp16 graphs) are accepted: the int8 file uses dynamic quantization
ops and the int4 file ONNX Runtime's ``MatMulNBits`` contrib op, which TensorRT's ONNX parser does
not take (run those through ONNX Runtime; use ``--fp16`` for TensorRT's own reduced precision).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..contracts.arch_spec import ArchSpec
from ..decoding.providers import ShapeProfile, format_shapes

__all__ = ["JETPACK_TRTEXEC", "BuildResult", "TensorRTUnavailable", "build_engine", "find_trtexec", "main",
           "read_spec", "trtexec_command"]

JETPACK_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
EXIT_UNAVAILABLE = 3


class TensorRTUnavailable(RuntimeError):
    """Neither trtexec nor the tensorrt Python package can be found."""


class EngineBuildError(RuntimeError):
    """TensorRT was found but the build failed (its output tail is in the message)."""


@dataclass
class BuildResult:
    engine: Path
    builder: str            # "trtexec" or "python-api"
    command: list[str]      # the trtexec command (empty for the Python API)
    seconds: float


def read_spec(onnx_path: str | os.PathLike) -> tuple[ArchSpec, dict[str, str]]:
    """(arch spec, metadata) of an exported file, read with ``onnx`` without loading the weights."""
    import onnx

    path = Path(onnx_path)
    if not path.is_file():
        raise ValueError(f"{path}: ONNX file not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 -- protobuf decode errors
        raise ValueError(f"{path}: not a readable ONNX file ({' '.join(str(exc).split())[:160]})") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if "edge_runtime.arch_spec" not in meta:
        raise ValueError(f"{path}: no 'edge_runtime.arch_spec' metadata; export the model with edge-export")
    return ArchSpec.from_dict(json.loads(meta["edge_runtime.arch_spec"])), meta


def trtexec_command(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, spec: ArchSpec,
                    profile: ShapeProfile | None = None, fp16: bool = True, trtexec: str = "trtexec",
                    extra: Sequence[str] = ()) -> list[str]:
    """The trtexec argv for one optimisation profile covering every input of ``spec``'s decoder."""
    shapes = (profile or ShapeProfile()).shapes(spec)
    cmd = [str(trtexec), f"--onnx={onnx_path}", f"--saveEngine={engine_path}",
           f"--minShapes={format_shapes(shapes, 0)}", f"--optShapes={format_shapes(shapes, 1)}",
           f"--maxShapes={format_shapes(shapes, 2)}"]
    if fp16:
        cmd.append("--fp16")
    return cmd + [str(e) for e in extra]


def find_trtexec(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if (shutil.which(explicit) or Path(explicit).is_file()) else None
    found = shutil.which("trtexec")
    if found:
        return found
    return JETPACK_TRTEXEC if Path(JETPACK_TRTEXEC).is_file() else None


def _tensorrt_module():
    try:
        import tensorrt  # type: ignore[import-not-found]
    except Exception as exc:  # noqa: BLE001 -- ImportError, or a broken install raising OSError
        return None, f"{type(exc).__name__}: {exc}"
    return tensorrt, ""


def _check_buildable(meta: dict[str, str], path: Path) -> None:
    if "edge_runtime.quantization" in meta:
        kind = json.loads(meta["edge_runtime.quantization"]).get("kind", "?")
        raise ValueError(f"{path}: an {kind} file (ONNX Runtime quantization ops) cannot be built with TensorRT; "
                         "build from the fp32 or fp16 export and use --fp16")
    if '"shared"' in meta.get("edge_runtime.kv_cache", ""):
        raise ValueError(f"{path}: has the shared KV cache graph (ONNX Runtime's GroupQueryAttention, not a "
                         "TensorRT layer); export for TensorRT with edge-export --kv-cache concat")


def _build_python_api(trt, onnx_path: Path, engine_path: Path, spec: ArchSpec, profile: ShapeProfile,
                      fp16: bool, workspace_mib: int) -> None:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and int(str(trt.__version__).split(".")[0]) < 10:
        flags = 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}: {errors[:400]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.shapes(spec).items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    tmp = engine_path.with_name(f".{engine_path.name}.tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, engine_path)


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, profile: ShapeProfile | None = None,
                 fp16: bool = True, trtexec: str | None = None, workspace_mib: int = 2048,
                 timeout_s: float = 3600.0) -> BuildResult:
    """Build ``engine_path`` from ``onnx_path`` with trtexec or the TensorRT Python API (see the
    module docstring). Raises TensorRTUnavailable, ValueError (bad file / profile) or EngineBuildError."""
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    spec, meta = read_spec(onnx_path)
    _check_buildable(meta, onnx_path)
    profile = profile or ShapeProfile()
    profile.shapes(spec)  # validates the profile against the model before anything runs
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    exe = find_trtexec(trtexec)
    t0 = time.perf_counter()
    if exe is not None:
        cmd = trtexec_command(onnx_path, engine_path, spec, profile, fp16=fp16, trtexec=exe,
                              extra=[f"--memPoolSize=workspace:{workspace_mib}"])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise EngineBuildError(f"trtexec did not finish within {timeout_s:.0f} s") from None
        if proc.returncode != 0 or not engine_path.is_file():
            tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
            raise EngineBuildError(f"trtexec exited {proc.returncode}: {tail[-600:]}")
        return BuildResult(engine_path, "trtexec", cmd, time.perf_counter() - t0)
    trt, why = _tensorrt_module()
    if trt is None:
        where = f"{trtexec} not found" if trtexec else f"no trtexec on PATH or at {JETPACK_TRTEXEC}"
        raise TensorRTUnavailable(f"TensorRT not available: {where}, and the tensorrt Python package cannot be "
                                  f"imported ({why}). Install TensorRT (JetPack ships it on Jetson; elsewhere "
                                  "pip install tensorrt) or pass --trtexec PATH.")
    _build_python_api(trt, onnx_path, engine_path, spec, profile, fp16, workspace_mib)
    return BuildResult(engine_path, "python-api", [], time.perf_counter() - t0)


def _triple(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX, got {text!r}")
    try:
        return tuple(int(p) for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three integers MIN,OPT,MAX, got {text!r}") from None


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="build_trt_engine", description="Build a TensorRT engine from an edge-export ONNX decoder.")
    p.add_argument("onnx", help="exported decoder (fp32 or fp16 edge-export file)")
    p.add_argument("-o", "--out", help="engine file (default: the ONNX path with .engine)")
    p.add_argument("--no-fp16", action="store_true", help="build float32 only (default: allow float16 layers)")
    p.add_argument("--seq", type=_triple, default=None, help="new tokens per run MIN,OPT,MAX (default 1,1,512)")
    p.add_argument("--past", type=_triple, default=None, help="cached tokens MIN,OPT,MAX (default 0,256,512)")
    p.add_argument("--batch", type=_triple, default=None, help="batch MIN,OPT,MAX (default 1,1,1)")
    p.add_argument("--trtexec", default=None, help="trtexec executable (default: PATH, then JetPack's location)")
    p.add_argument("--workspace-mib", type=int, default=2048, help="builder workspace, MiB (default 2048)")
    p.add_argument("--dry-run", action="store_true", help="print the trtexec command and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI. Exit codes: 0 built (or --dry-run printed), 2 bad input, 3 TensorRT not available,
    1 the build failed."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        print(f"build_trt_engine: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    onnx_path = Path(args.onnx)
    out = Path(args.out) if args.out else onnx_path.with_suffix(".engine")
    defaults = ShapeProfile()
    try:
        profile = ShapeProfile(batch=args.batch or defaults.batch, seq=args.seq or defaults.seq,
                               past=args.past or defaults.past)
        if args.workspace_mib < 1:
            raise ValueError("--workspace-mib must be >= 1")
        if args.dry_run:
            spec, meta = read_spec(onnx_path)
            _check_buildable(meta, onnx_path)
            cmd = trtexec_command(onnx_path, out, spec, profile, fp16=not args.no_fp16,
                                  trtexec=find_trtexec(args.trtexec) or args.trtexec or "trtexec",
                                  extra=[f"--memPoolSize=workspace:{args.workspace_mib}"])
            print(" ".join(cmd))
            return 0
        result = build_engine(onnx_path, out, profile, fp16=not args.no_fp16, trtexec=args.trtexec,
                              workspace_mib=args.workspace_mib)
    except TensorRTUnavailable as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    except (ValueError, TypeError) as exc:
        print(f"build_trt_engine: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except (EngineBuildError, OSError) as exc:
        print(f"build_trt_engine: build failed: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    size = result.engine.stat().st_size
    print(f"built {result.engine} ({size / 2**20:.1f} MiB) with {result.builder} in {result.seconds:.0f} s")
    return 0
