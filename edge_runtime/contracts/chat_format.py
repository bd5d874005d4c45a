"""How a task prompt becomes model input, and which token ends an answer: the chat format.

A from-scratch preset reads the task prompt as is and ends its answer with our ``<|endoftext|>``
("plain"). A pretrained instruct model (SmolLM2-135M-Instruct) was tuned on ChatML turns and
ends an assistant turn with ``<|im_end|>`` ("chatml"). Training (SFT data, GRPO sampling, the
PyTorch policy) and the vehicle (the ONNX generator) must feed the model exactly the same text,
so the format is recorded once -- ``chat_format.json`` beside the weights of a model directory,
the ``edge_runtime.chat_format`` metadata field of an exported ONNX file -- and every side renders
with :meth:`ChatFormat.render`. Nothing recorded means "plain" (models exported before the
format existed keep working unchanged).

Why a fixed string template instead of the model's Jinja chat template: the vehicle install has
no Jinja, and the ChatML template of SmolLM2 (and the generic ChatML template) reduces, for one
optional system turn, one user turn and ``add_generation_prompt=True``, to the concatenation in
:meth:`ChatFormat.render`::

    <|im_start|>system\\n{system}<|im_end|>\\n          (only when a system message is set)
    <|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n

SmolLM2's template inserts its own default system message when the conversation has none; to
match it, record that message as ``system`` (``tests/test_chat_format.py`` renders the Jinja
templates with transformers and compares). ``system=None`` gives the shorter prompt without a
system turn -- a fine-tuned model is trained and run on whichever was recorded.

Standard library only (contracts layer).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CHAT_FORMAT_FILE", "CHAT_FORMAT_VERSION", "CHATML_END", "CHATML_START", "KINDS", "PLAIN_EOS",
           "PLAIN_PAD", "ChatFormat", "ChatFormatError", "read_chat_format"]

CHAT_FORMAT_FILE = "chat_format.json"
CHAT_FORMAT_VERSION = 1
KINDS = ("plain", "chatml")
PLAIN_EOS, PLAIN_PAD = "<|endoftext|>", "<|pad|>"  # our tokenizer's (edge_runtime.model.tokenizer)
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"


class ChatFormatError(ValueError):
    """A chat format is malformed; the message names the field and what to do."""


@dataclass(frozen=True)
class ChatFormat:
    """``kind``: "plain" (prompt as is) or "chatml"; ``eos_token``: the token string that ends an
    answer (generation stops there; chatml: ``<|im_end|>``); ``pad_token``: the token string that
    pads batches; ``system``: chatml only, an optional system message."""

    kind: str = "plain"
    eos_token: str = PLAIN_EOS
    pad_token: str = PLAIN_PAD
    system: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ChatFormatError(f"chat_format.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("eos_token", "pad_token"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ChatFormatError(f"chat_format.{name} must be a non-empty token string, got {value!r}")
        if self.system is not None and not isinstance(self.system, str):
            raise ChatFormatError(f"chat_format.system must be a string or null, got {type(self.system).__name__}")
        if self.kind == "plain" and self.system is not None:
            raise ChatFormatError("chat_format.system is only used by kind 'chatml'; drop it or use chatml")
        if self.kind == "chatml" and self.eos_token != CHATML_END:
            raise ChatFormatError(f"chat_format.eos_token must be {CHATML_END!r} for chatml (the token that ends "
                                  f"an assistant turn), got {self.eos_token!r}")

    @classmethod
    def plain(cls) -> ChatFormat:
        """The tiny presets' format: prompt as is, answer ended by our ``<|endoftext|>``."""
        return cls()

    @classmethod
    def chatml(cls, system: str | None = None, pad_token: str = "<|endoftext|>") -> ChatFormat:
        """ChatML (SmolLM2, Qwen2 instruct): ``<|im_end|>`` ends the answer."""
        return cls("chatml", CHATML_END, pad_token, system)

    def render(self, prompt: str) -> str:
        """The model input for a task prompt (what the answer is generated after)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if self.kind == "plain":
            return prompt
        head = f"{CHATML_START}system\n{self.system}{CHATML_END}\n" if self.system is not None else ""
        return f"{head}{CHATML_START}user\n{prompt}{CHATML_END}\n{CHATML_START}assistant\n"

    def special_tokens(self) -> tuple[str, ...]:
        """The token strings this format writes or stops at; each must be one token of the tokenizer."""
        if self.kind == "chatml":
            return tuple(dict.fromkeys((CHATML_START, CHATML_END, self.eos_token, self.pad_token)))
        return tuple(dict.fromkeys((self.eos_token, self.pad_token)))

    @property
    def answer_suffix(self) -> str:
        """What follows the answer in training (and ends generation): the EOS token string."""
        return self.eos_token

    def to_dict(self) -> dict[str, Any]:
        return {"version": CHAT_FORMAT_VERSION, "kind": self.kind, "eos_token": self.eos_token,
                "pad_token": self.pad_token, "system": self.system}

    @classmethod
    def from_dict(cls, data: Any) -> ChatFormat:
        if not isinstance(data, dict):
            raise ChatFormatError(f"chat_format must be a JSON object, got {type(data).__name__}")
        if data.get("version") != CHAT_FORMAT_VERSION:
            raise ChatFormatError(f"chat_format.version is {data.get('version')!r}; this edge_runtime reads "
                                  f"{CHAT_FORMAT_VERSION} (upgrade edge_runtime or rewrite the chat format)")
        unknown = set(data) - {"version", "kind", "eos_token", "pad_token", "system"}
        if unknown:
            raise ChatFormatError(f"chat_format has unknown fields {sorted(unknown)}; remove them")
        if "kind" not in data:
            raise ChatFormatError("chat_format.kind is missing; give 'plain' or 'chatml'")
        defaults = cls.plain() if data["kind"] == "plain" else cls.chatml()
        return cls(kind=data["kind"], eos_token=data.get("eos_token", defaults.eos_token),
                   pad_token=data.get("pad_token", defaults.pad_token), system=data.get("system"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``chat_format.json`` (``path`` is the file or the model directory), atomically."""
        path = Path(path)
        if path.is_dir():
            path = path / CHAT_FORMAT_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


def read_chat_format(model_dir: str | os.PathLike) -> ChatFormat:
    """The chat format of a model directory: its ``chat_format.json``; else a ``chat_format`` object
    in ``edge_runtime_meta.json``'s user metadata (where an importer may put it); else plain."""
    model_dir = Path(model_dir)
    path = model_dir / CHAT_FORMAT_FILE
    where = str(path)
    data = None
    try:
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
        else:
            meta = model_dir / "edge_runtime_meta.json"
            if meta.is_file():
                where = f"{meta} (metadata.chat_format)"
                data = (json.loads(meta.read_text(encoding="utf-8")).get("metadata") or {}).get("chat_format")
    except json.JSONDecodeError as exc:
        raise ChatFormatError(f"{where}: not valid JSON ({exc}); rewrite it with ChatFormat.save") from None
    if data is None:
        return ChatFormat.plain()
    try:
        return ChatFormat.from_dict(data)
    except ChatFormatError as exc:
        raise ChatFormatError(f"{where}: {exc}") from None
