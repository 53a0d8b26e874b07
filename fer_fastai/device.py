"""Choose the torch device: Apple MPS, else CUDA, else CPU, unless the user names one."""

from __future__ import annotations

import torch

from .errors import FerError

DEVICE_CHOICES = ("auto", "mps", "cuda", "cpu")


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def cuda_available() -> bool:
    return torch.cuda.is_available()


def pick_device(requested: str = "auto") -> torch.device:
    """The device to train and run on; asking for one this machine lacks is an error, not a fallback."""
    choice = (requested or "auto").lower()
    if choice.startswith("cuda:"):  # an explicit GPU index, e.g. cuda:1
        base = "cuda"
    else:
        base = choice
    if base not in DEVICE_CHOICES:
        raise FerError(f"unknown device {requested!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if base == "auto":
        if mps_available():
            return torch.device("mps")
        if cuda_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if base == "mps" and not mps_available():
        raise FerError("--device mps asked for, but this machine has no usable Apple MPS; use --device auto or cpu")
    if base == "cuda" and not cuda_available():
        raise FerError("--device cuda asked for, but torch sees no CUDA GPU; use --device auto or cpu")
    return torch.device(choice)
