"""The public step API of the decoder: what a decoding loop drives, and what it returns.

Modelled on onnxruntime-genai's generator (``append_tokens`` then read the logits): a
:class:`DecodeSession` is one sequence with its KV cache; ``append_tokens(ids)`` runs the graph
on ``ids`` after what is cached and returns their logits. Greedy decoding
(:meth:`~edge_runtime.decoding.generator.OnnxGenerator.generate`), sampling and grammar-constrained
decoding (:mod:`edge_runtime.decoding.constrained`) are all clients of it, so none of them
reaches into the generator's graph binding or cache buffers. The protocols live in their own
module so that a decoding loop depends on the API, not on the generator that implements it
(``generator`` imports ``constrained`` for ``generate(constrained=True)``, never the reverse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = ["DecodeSession", "GenerationResult", "KVCapacityError", "StepDecoder", "common_prefix_length"]


class KVCapacityError(ValueError):
    """A prompt plus its token budget cannot fit a fixed-capacity KV cache (``check_fits``; one line,
    raised before the graph runs)."""


@dataclass(frozen=True)
class GenerationResult:
    """One completion with its token accounting and timings (telemetry counts what was really emitted)."""

    text: str                        # generated text, EOS/pad removed
    token_ids: tuple[int, ...]       # generated ids, the EOS included when generation stopped on it
    prompt_tokens: int
    emitted_tokens: int              # == len(token_ids)
    time_to_first_token_s: float     # tokenize + prefill + first choice
    decode_times_s: tuple[float, ...] = field(repr=False)  # one per model-chosen token after the first
    total_s: float = 0.0
    stopped_at_eos: bool = False
    forced_tokens: int = 0           # of emitted_tokens, appended by the grammar without a forward pass of their own
    forward_passes: int = 0          # graph runs, the prefill included
    constrained: str | None = None   # grammar used ("mpc" / "decision"), None: unconstrained


class DecodeSession(Protocol):
    """One sequence being decoded: its KV cache and its length."""

    @property
    def length(self) -> int:
        """Tokens in the cache (the position of the next appended token)."""
        ...

    def append_tokens(self, token_ids: Sequence[int]) -> np.ndarray:
        """Run the graph on ``token_ids`` after the cached ones; their logits ``[len(token_ids), vocab]``
        (the last row scores the next token)."""
        ...

    def reset(self) -> None:
        """Start over with an empty cache (the same buffers)."""
        ...

    # Optional: ``prefill(token_ids) -> logits`` (at least the last row) appends a prompt to an empty
    # session and may start it from a cached prompt prefix (the ONNX generator's DecodeState does);
    # decoding loops fall back to ``append_tokens`` for sessions without it (test doubles).


class StepDecoder(Protocol):
    """A tokenizer plus a graph that opens :class:`DecodeSession` objects."""

    eos_id: int
    tokenizer: Any

    def start(self) -> DecodeSession: ...

    def encode(self, prompt: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def check_fits(self, prompt_tokens: int, max_new_tokens: int) -> None:
        """KVCapacityError when the prompt plus ``max_new_tokens`` cannot fit the cache."""
        ...


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids ``a`` and ``b`` share (prompt-prefix caching compares ids, not
    text, because BPE may merge characters across the end of a shared text)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
