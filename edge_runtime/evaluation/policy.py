"""What the evaluation needs from a model: text in, text out, with token counts.

The protocol keeps the evaluation torch-free: the PyTorch implementation lives in
``torch_policy`` (training side), the ONNX Runtime one in the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    emitted_tokens: int  # tokens the model really produced (EOS included when it stopped on it)


class TextPolicy(Protocol):
    name: str

    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[Generation]:
        """Greedy completions of ``prompts``, each stopping at EOS or ``max_new_tokens``."""
        ...

    def parameter_count(self) -> int: ...

    def file_size(self) -> int:
        """Bytes of the weights on disk."""
        ...
