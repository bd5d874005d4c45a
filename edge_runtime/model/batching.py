"""Where a batch meets a model: left padding for generation and moving a batch to the model's device.

Why here: training (SFT, GRPO), pruning (calibration batches for the Taylor scores) and the
PyTorch evaluation policy all hand token batches to a Hugging Face model, and each of them must
put the batch where the model's weights are -- a trainer may have moved the model to CUDA while
the batch was built on the CPU. One helper for that, below everything that feeds a model, keeps
``prune/`` and ``evaluation/`` from importing ``train/`` (or each other) for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["batch_to_device", "left_pad", "model_device"]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of a batch padded on the left, so that every row ends where
    generation starts (what batched ``generate`` needs). Both tensors are on the CPU."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, seq in enumerate(rows):
        ids[j, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        mask[j, width - len(seq):] = 1
    return ids, mask


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (our models keep every weight on one device)."""
    for p in model.parameters():
        return p.device
    raise ValueError(f"{type(model).__name__} has no parameters, so it has no device to move a batch to")


def batch_to_device(batch: Mapping[str, object], device: torch.device | str) -> dict[str, object]:
    """A copy of ``batch`` with every tensor on ``device`` (other values as they are); tensors
    already there are not copied."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
