"""Save and load (possibly non-uniform) models as self-describing safetensors directories.

A model directory holds:
  model.safetensors        weights (lm_head omitted when tied), never pickle
  arch_spec.json           the per-layer ArchSpec: the source of truth for shapes
  config.json              HF config; a uniform model loads with plain `from_pretrained`,
                           a non-uniform one carries `"edge_runtime_nonuniform": true` and makes
                           plain `from_pretrained` fail with a size-mismatch error
  tokenizer.json           (optional) copied verbatim
  edge_runtime_meta.json   user metadata + versions, parameter count, sha256 of the weights
  (optional) extra text files the caller names, e.g. chat_template.jinja of an imported model

Why the strict check: Hugging Face's option to ignore mismatched sizes silently re-initialises
mismatched weights (design.md forbids it); here every tensor must be present with exactly the spec's shape.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..contracts.arch_spec import ArchSpec
from .build import materialize, skeleton
from .spec import hf_kwargs, spec_from_hf_config, spec_from_model, to_hf_config

WEIGHTS = "model.safetensors"
SPEC = "arch_spec.json"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"
META = "edge_runtime_meta.json"
META_FORMAT = "edge_runtime.model_meta"
NONUNIFORM_KEY = "edge_runtime_nonuniform"

__all__ = ["ModelFormatError", "check_tensor_shapes", "load_model", "load_pretrained_dir", "save_model"]


class ModelFormatError(ValueError):
    """A model directory is incomplete or its weights do not match its architecture spec."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _hf_config_dict(spec: ArchSpec, dtype: torch.dtype) -> dict[str, Any]:
    """HF's own diff-style config dict, with every spec-derived value written explicitly (so a
    change of class defaults in a later transformers cannot alter the architecture)."""
    from .build import model_class

    config = to_hf_config(spec)
    config.architectures = [model_class(spec.family).__name__]
    data = config.to_diff_dict()
    data.update(hf_kwargs(spec))
    data.update(num_attention_heads=spec.layers[0].num_q_heads, num_key_value_heads=spec.layers[0].num_kv_heads,
                head_dim=spec.head_dim, model_type=spec.family, dtype=str(dtype).removeprefix("torch."))
    data.pop("_attn_implementation_internal", None)
    if not spec.is_uniform:
        data[NONUNIFORM_KEY] = True
    return data


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished temp dir into place; an existing model dir is swapped out, not merged."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if any(out_dir.iterdir()) and not ((out_dir / SPEC).exists() or (out_dir / CONFIG).exists()):
        raise FileExistsError(f"{out_dir} exists and does not look like a model directory; "
                              f"refusing to replace it (pick a new path or empty it)")
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model, out_dir: str | os.PathLike, spec: ArchSpec | None = None,
               tokenizer_json: str | os.PathLike | None = None,
               metadata: dict[str, Any] | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Write a model directory atomically (everything goes to a temp dir, then one rename).

    `spec` defaults to the spec read from the model's modules; a given spec must match them.
    `extra_files` maps plain file names to UTF-8 text written beside the weights (e.g. an imported
    model's chat template), inside the same atomic rename so that no half directory is ever seen.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    actual = spec_from_model(model)
    if spec is None:
        spec = actual
    elif (spec.family, spec.head_dim) != (actual.family, actual.head_dim) or \
            spec.expected_tensor_shapes() != actual.expected_tensor_shapes():
        # Shapes must agree; non-structural fields (token ids, eps, rope) come from the given spec.
        raise ModelFormatError(f"save_model: the given spec does not match the model's modules "
                               f"(model has {actual}, spec says {spec})")
    tokenizer_path = Path(tokenizer_json) if tokenizer_json is not None else None
    if tokenizer_path is not None and not tokenizer_path.is_file():
        raise FileNotFoundError(f"tokenizer_json {tokenizer_path} does not exist")

    state = model.state_dict()
    tensors = {name: state[name].detach().contiguous().cpu() for name in spec.expected_tensor_shapes()}
    dtype = tensors["model.embed_tokens.weight"].dtype
    meta_user = json.loads(json.dumps(metadata or {}))  # fail early if not JSON-serialisable
    reserved = {WEIGHTS, SPEC, CONFIG, TOKENIZER, META}
    for name in extra_files or {}:
        if name in reserved or Path(name).name != name or name.startswith("."):
            raise ValueError(f"save_model: extra file name {name!r} must be a plain file name other than "
                             f"{', '.join(sorted(reserved))}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": "pt"})
        spec.save(tmp / SPEC)
        _write_json(tmp / CONFIG, _hf_config_dict(spec, dtype))
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / TOKENIZER)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        import safetensors
        import transformers

        _write_json(tmp / META, {
            "format": META_FORMAT, "version": 1,
            "edge_runtime_version": __version__, "torch_version": torch.__version__,
            "transformers_version": transformers.__version__, "safetensors_version": safetensors.__version__,
            "num_parameters": spec.num_parameters(), "dtype": str(dtype).removeprefix("torch."),
            "model_sha256": sha256_file(tmp / WEIGHTS),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "metadata": meta_user,
        })
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def check_tensor_shapes(found: dict[str, tuple[int, ...]], spec: ArchSpec, weights_name: str = WEIGHTS,
                        spec_name: str = SPEC) -> None:
    """Raise ModelFormatError unless `found` has exactly the spec's tensors and shapes."""
    expected = spec.expected_tensor_shapes()
    problems = []
    for name, shape in expected.items():
        if name not in found:
            problems.append(f"{weights_name}: tensor {name} is missing, {spec_name} expects shape {shape}")
        elif tuple(found[name]) != shape:
            problems.append(f"{weights_name}: tensor {name} has shape {tuple(found[name])}, "
                            f"{spec_name} expects {shape}")
    for name, shape in found.items():
        if name not in expected:
            hint = " (embeddings are tied: lm_head is not stored)" if name == "lm_head.weight" else ""
            problems.append(f"{weights_name}: unexpected tensor {name} with shape {tuple(shape)}, "
                            f"not in {spec_name}{hint}")
    if problems:
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ModelFormatError("\n".join(problems[:10]) + more)


def load_model(model_dir: str | os.PathLike, dtype: torch.dtype | None = None):
    """Load a directory written by save_model -> (model in eval mode, spec).

    `dtype=None` keeps the stored dtype. Every tensor is checked against arch_spec.json before
    anything is built; the weights' sha256 is checked against edge_runtime_meta.json if present.
    """
    from safetensors import safe_open

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    spec_path, weights_path = model_dir / SPEC, model_dir / WEIGHTS
    if not spec_path.is_file():
        raise ModelFormatError(f"{model_dir}: no {SPEC}; this is not an edge_runtime model directory. "
                               f"For a Hugging Face checkpoint use load_pretrained_dir(), or re-save "
                               f"the model with edge_runtime.model.io.save_model()")
    if not weights_path.is_file():
        raise ModelFormatError(f"{model_dir}: no {WEIGHTS} next to {SPEC}; the directory is incomplete, "
                               f"re-save the model with save_model()")
    spec = ArchSpec.load(spec_path)
    meta_path = model_dir / META
    if meta_path.is_file():
        expected_sha = json.loads(meta_path.read_text(encoding="utf-8")).get("model_sha256")
        if expected_sha and sha256_file(weights_path) != expected_sha:
            raise ModelFormatError(f"{weights_path}: sha256 differs from {META}; the weights were "
                                   f"modified or corrupted after saving")
    with safe_open(str(weights_path), framework="pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        check_tensor_shapes(shapes, spec, str(weights_path), SPEC)
        tensors = {name: f.get_tensor(name) for name in shapes}
    stored = tensors["model.embed_tokens.weight"].dtype
    model = materialize(skeleton(spec), spec, tensors, dtype or stored)
    return model, spec


def _has_safetensors(model_dir: Path) -> bool:
    return (model_dir / WEIGHTS).is_file() or (model_dir / f"{WEIGHTS}.index.json").is_file()


def load_pretrained_dir(model_dir: str | os.PathLike, dtype: torch.dtype | None = None):
    """Any local Qwen2/Llama HF checkpoint dir (config.json + safetensors) -> (model, spec).

    Directories written by save_model (they have arch_spec.json) go through load_model, so
    non-uniform models work too. Pickle weights (pytorch_model.bin) are refused.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if (model_dir / SPEC).is_file():
        return load_model(model_dir, dtype=dtype)
    config_path = model_dir / CONFIG
    if not config_path.is_file():
        raise ModelFormatError(f"{model_dir}: no {CONFIG}; expected a Hugging Face checkpoint directory "
                               f"(config.json + model.safetensors) or one written by save_model()")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get(NONUNIFORM_KEY):
        raise ModelFormatError(f"{config_path}: marks a non-uniform (pruned) model but {SPEC} is missing; "
                               f"restore {SPEC} from the original save_model() output")
    model_type = config.get("model_type")
    if model_type not in ("qwen2", "llama"):
        raise ModelFormatError(f"{config_path}: unsupported model_type {model_type!r}; supported: llama, qwen2")
    if not _has_safetensors(model_dir):
        raise ModelFormatError(f"{model_dir}: no {WEIGHTS} (or sharded index); only safetensors weights are "
                               f"loaded (pickle checkpoints such as pytorch_model.bin are refused; convert them "
                               f"with a trusted tool first)")
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True, "attn_implementation": "sdpa"}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    spec = spec_from_hf_config(model.config)
    actual = spec_from_model(model)
    if actual != spec:
        raise ModelFormatError(f"{model_dir}: loaded modules do not match {CONFIG} ({actual} vs {spec})")
    model.config.use_cache = True
    return model.eval(), spec
