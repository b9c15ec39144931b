"""Where a model runs: the device a task asks for, and the precision it computes in there."""

import contextlib

import torch

from .errors import SpecError


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("training.device is 'cuda' but no CUDA device is visible; use device: auto or cpu")
    return torch.device(device)


def autocast(device: torch.device, bf16: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on CPU, where bf16 matmuls are slow and lossy."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
