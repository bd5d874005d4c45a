"""What a text policy is: text in, text out, with token counts.

The evaluation, the control loop's LLM worker and the training-side checks all drive a model
through this protocol, so that they need not know whether it is the ONNX Runtime generator
(vehicle side, :mod:`edge_runtime.decoding.generator`) or the PyTorch model
(:mod:`edge_runtime.evaluation.torch_policy`). It lives in the contracts layer because both of
those implementations, which stand in different layers, return :class:`Generation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

__all__ = ["Generation", "TextPolicy"]


@dataclass(frozen=True)
class Generation:
    """One completion and its token counts (the telemetry counts what was really emitted)."""

    text: str
    prompt_tokens: int
    emitted_tokens: int  # tokens the model really produced (EOS included when it stopped on it)


class TextPolicy(Protocol):
    """A model that completes prompts greedily; implemented by the ONNX and the PyTorch policies."""

    name: str

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[Generation]:
        """Greedy completions of ``prompts``, each stopping at EOS or ``max_new_tokens``."""
        ...

    def parameter_count(self) -> int: ...

    def file_size(self) -> int:
        """Bytes of the weights on disk."""
        ...
