"""Where a model runs: the device a task asks for, and the precision it computes in there."""

import contextlib
import functools
import os

import torch

from .errors import SpecError


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError("training.device is 'cuda' but no CUDA device is visible; use device: auto or cpu")
    return torch.device(device)


# oneDNN keeps up to 1024 bf16 matmul primitives, one per shape, each with its own buffers; training's batches come
# in up to max_length shapes, and the cache grew a MiniLM run by up to 300 MiB (webster-fields' peak 1.46 GiB against
# 1.14 in float32). 64 entries: 200 steps of varied lengths peaked at 1152 MiB against 1382 (float32: 1086), a
# server-sections run at 777 MiB against 826 in the same time; 8 entries took less (745 MiB) but one run of two 26 %
# longer. A value the user set is kept.
PRIMITIVE_CACHE = "64"


@functools.cache  # asked before every training step; the CPU does not change
def cpu_bf16() -> bool:
    """Does this CPU compute bf16 matmuls in hardware (AVX512-BF16 or AMX tiles)? There oneDNN runs them at about
    2.5x float32's rate (a MiniLM train step here: 0.24 s against 0.60 s); elsewhere bf16 on a CPU is emulated and
    slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device: torch.device, bf16: bool = True, training: bool = False) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, and for training on a CPU with native bf16 (cpu_bf16), where the LoRA branch and its
    sum stay float32 (lora_core.layer). Evaluation on a CPU stays float32: the gate's metrics and the merge check's
    1e-3 compare like with like on every machine."""
    if not bf16:
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and training and cpu_bf16():
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", PRIMITIVE_CACHE)  # read at oneDNN's first use
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
