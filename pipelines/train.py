"""The training loop for a model whose trainable parameters are its adapter (and saved modules)."""

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on CPU, where bf16 matmuls are slow and lossy."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def warmup_linear_decay(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """lr multiplier: linear 0 → 1 over warmup, then linear 1 → 0 at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def train(model: nn.Module, make_batches: Callable[[int], Iterator[dict]], steps: int, lr: float,
          weight_decay: float = 0.0, warmup_fraction: float = 0.1, device: str = "auto",
          on_step: Callable[[int, float, float], None] | None = None) -> list[float]:
    """AdamW over the trainable parameters for `steps` optimizer steps; returns the loss per step.

    make_batches(epoch) yields batches with a `labels` entry; epochs roll over until `steps`.
    """
    dev = resolve_device(device)
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters; inject an adapter first")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_linear_decay(max(1, math.ceil(warmup_fraction * steps)), steps))
    losses: list[float] = []
    epoch = 0
    while len(losses) < steps:
        for batch in make_batches(epoch):
            batch = {k: v.to(dev) for k, v in batch.items()}
            with autocast(dev):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if on_step:
                on_step(len(losses), losses[-1], schedule.get_last_lr()[0])
            if len(losses) == steps:
                break
        epoch += 1
    model.eval()
    return losses


@torch.no_grad()
def predict_logits(model: nn.Module, batches: Iterator[dict], device: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [n, classes] in float32, labels [n]) over all batches, model in eval mode."""
    dev = resolve_device(device)
    model.to(dev).eval()
    logits, labels = [], []
    for batch in batches:
        labels.append(batch.pop("labels"))
        with autocast(dev):
            logits.append(model(**{k: v.to(dev) for k, v in batch.items()}).logits.float().cpu())
    return torch.cat(logits), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels).float().mean().item()
