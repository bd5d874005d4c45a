"""Which device a training command runs on, and how a summary names it.

Why a module of its own: every ``edge-train`` command takes ``--device auto|cpu|cuda`` and
records the device it really used (with the GPU's name on CUDA) in its summary, which the model
card reads; the trainers fall back to the same "auto" rule when no device is given.
"""

from __future__ import annotations

import torch

__all__ = ["DEVICE_CHOICES", "describe_device", "resolve_device"]

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): CUDA when available, else the CPU; ``cpu``; ``cuda`` (or ``cuda:N``)
    only when CUDA is available -- else a ValueError that says what to do."""
    if choice is None or choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device: unknown device {choice!r}; use one of {', '.join(DEVICE_CHOICES)}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {choice}: CUDA is not available on this machine (torch {torch.__version__}); "
                         "use --device cpu or --device auto")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: {device.type!r} is not supported for training; use one of "
                         f"{', '.join(DEVICE_CHOICES)}")
    return device


def describe_device(device: torch.device | str) -> dict[str, str | None]:
    """The summary fields of a run's device: ``device`` (e.g. "cpu", "cuda:0") and ``gpu`` (the
    CUDA device's name, None on the CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"device": str(device), "gpu": None}
    index = device.index if device.index is not None else torch.cuda.current_device()
    return {"device": f"cuda:{index}", "gpu": torch.cuda.get_device_name(index)}
