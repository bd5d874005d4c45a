"""Greedy generation with a PyTorch Hugging Face model (training side; the reference for ONNX).

Prompts are rendered with the model's chat format and generation stops at its EOS token, as in
the ONNX generator (``edge_runtime.contracts.chat_format``; a model directory without one is plain)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..model.batching import left_pad
from ..model.tokenizer import special_ids
from ..contracts.chat_format import ChatFormat, read_chat_format
from ..contracts.generation import Generation


class TorchPolicy:
    def __init__(self, model, tokenizer, name: str = "torch", weights_path: str | Path | None = None,
                 batch_size: int = 16, chat_format: ChatFormat | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer
        self.name = name
        self.weights_path = Path(weights_path) if weights_path else None
        self.batch_size = batch_size
        self.chat_format = chat_format or ChatFormat.plain()
        self.eos_id, self.pad_id = special_ids(tokenizer, self.chat_format)

    @classmethod
    def from_dir(cls, path: str | Path, batch_size: int = 16, device: str = "cpu") -> "TorchPolicy":
        """``device``: where the model generates ("cpu", "cuda", "auto"; the training side's rule)."""
        from ..model.io import load_model
        from ..model.tokenizer import load_tokenizer

        path = Path(path)
        from ..train.device import resolve_device

        model, _ = load_model(path)
        model = model.to(resolve_device(device))
        chat_format = read_chat_format(path)
        return cls(model, load_tokenizer(path / "tokenizer.json", chat_format), name=path.name,
                   weights_path=path / "model.safetensors", batch_size=batch_size, chat_format=chat_format)

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def file_size(self) -> int:
        return self.weights_path.stat().st_size if self.weights_path and self.weights_path.exists() else 0

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[Generation]:
        out: list[Generation] = []
        device = next(self.model.parameters()).device
        for i in range(0, len(prompts), self.batch_size):
            chunk = [self.tokenizer.encode(self.chat_format.render(p)).ids for p in prompts[i:i + self.batch_size]]
            ids, mask = left_pad(chunk, self.pad_id)
            width = ids.shape[1]
            gen = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.eos_id,
                                      pad_token_id=self.pad_id)
            for j, seq in enumerate(chunk):
                new = gen[j, width:].tolist()
                if self.eos_id in new:
                    new = new[: new.index(self.eos_id) + 1]
                text_ids = [t for t in new if t not in (self.eos_id, self.pad_id)]
                out.append(Generation(self.tokenizer.decode(text_ids, skip_special_tokens=False),
                                      prompt_tokens=len(seq), emitted_tokens=len(new)))
        return out
