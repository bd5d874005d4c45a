"""Opening an exported decoder file: the ONNX Runtime session and the metadata that makes it self-describing.

An exported file carries everything the vehicle needs (``edge_runtime.export.onnx_export`` writes
it): the architecture spec, the tokenizer, the prompt version, the answer schema, the generation
settings and the KV-cache layout. This module checks that the metadata is there and readable, and
turns every way a file can be unusable -- missing, corrupt, truncated, written by an incompatible
version -- into one :class:`ModelLoadError` line naming the file and the field, so that a bad
file fails at load time on the vehicle rather than at the first instruction.

Vehicle side: onnxruntime only (no torch, no onnx).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

from ..contracts.user_input import UserInputError, loads_bounded, quote

__all__ = ["META", "OPTIONAL_METADATA", "REQUIRED_METADATA", "SUPPORTED_FORMAT_VERSIONS", "ModelLoadError", "json_field", "one_line",
           "open_session", "read_metadata"]

META = "edge_runtime."
#: Metadata keys an exported file must carry (written by edge_runtime.export.onnx_export).
REQUIRED_METADATA = tuple(META + k for k in ("format_version", "arch_spec", "tokenizer", "prompt_version",
                                             "answer_schema", "generation", "source_sha256", "dtype"))
#: Metadata keys a reader takes when present: files exported before them lack them (kv_cache absent =
#: concatenating layout, chat_format absent = plain prompts).
OPTIONAL_METADATA = tuple(META + k for k in ("kv_cache", "chat_format"))
SUPPORTED_FORMAT_VERSIONS = ("1",)


class ModelLoadError(RuntimeError):
    """An ONNX model file cannot be used: missing, corrupt, truncated, or without the metadata
    the runtime needs. The message is one line naming the file (and the field, if any)."""


def one_line(text: object, limit: int = 240) -> str:
    """``text`` on one line, cut to ``limit`` characters (error messages quote library errors)."""
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def open_session(path: Path, providers: list[Any], threads: int | None) -> ort.InferenceSession:
    """An inference session on ``providers``; ``threads``: intra-op threads (None: ONNX Runtime's default)."""
    options = ort.SessionOptions()
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # noqa: BLE001 -- ORT raises its own exception types for protobuf / graph errors
        raise ModelLoadError(f"{path}: not a readable ONNX model (corrupt or truncated file?): "
                             f"{one_line(exc, 160)}") from None


def read_metadata(path: str | Path, session: ort.InferenceSession | None = None) -> dict[str, str]:
    """The edge_runtime metadata of an exported file; ModelLoadError when a required key is missing."""
    path = Path(path)
    if session is None:
        if not path.is_file():
            raise ModelLoadError(f"{path}: ONNX model file not found")
        session = open_session(path, ["CPUExecutionProvider"], 1)
    meta = dict(session.get_modelmeta().custom_metadata_map)
    for key in REQUIRED_METADATA:
        if key not in meta:
            raise ModelLoadError(f"{path}: metadata field '{key}' is missing; re-export the model with "
                                 f"edge-export")
    version = meta[META + "format_version"]
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelLoadError(f"{path}: metadata field '{META}format_version' is {version!r}; this runtime reads "
                             f"{', '.join(SUPPORTED_FORMAT_VERSIONS)} (upgrade edge_runtime or re-export)")
    return meta


def json_field(path: Path, meta: dict[str, str], key: str) -> Any:
    """The JSON value of metadata field ``edge_runtime.<key>``, read with the bounded user-JSON loader
    (``edge_runtime.contracts.user_input``: a file is input like any other); ModelLoadError naming the
    file and field when it does not parse -- and, for ``generation``, when a token id is not an integer."""
    field = f"{path}: metadata field '{META}{key}'"
    try:
        value = loads_bounded(meta[META + key], field)
    except UserInputError as exc:
        raise ModelLoadError(one_line(exc, 400)) from None
    if key == "generation":
        _check_generation(field, value)
    return value


def _check_generation(field: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ModelLoadError(f"{field} must be a JSON object, got {type(value).__name__}; re-export the model "
                             "with edge-export")
    for name in ("eos_id", "pad_id"):
        if name not in value or (name == "pad_id" and value[name] is None):
            continue  # a missing eos_id is reported by the reader; pad_id may be null
        v = value[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ModelLoadError(f"{field}: '{name}' must be a token id (an integer >= 0), got {quote(v, 40)}; "
                                 "re-export the model with edge-export")
