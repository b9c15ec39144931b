"""Predictions, held-out metrics and the promotion gate."""

import math
from collections.abc import Iterable

import torch
from torch import nn

from .device import autocast, resolve_device
from .errors import DataError
from .results import Metrics
from .spec import GateSpec

LOWER_IS_BETTER = ("perplexity", "loss")


@torch.no_grad()
def predict_logits(
    model: nn.Module, batches: Iterable[dict], device: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
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


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> Metrics:
    """accuracy and macro-F1 (F1 per class, averaged with equal weight; classes absent from both count 0)."""
    predicted = logits.argmax(-1)
    f1s = []
    for c in range(logits.shape[-1]):
        tp = ((predicted == c) & (labels == c)).sum().item()
        fp = ((predicted == c) & (labels != c)).sum().item()
        fn = ((predicted != c) & (labels == c)).sum().item()
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": (predicted == labels).float().mean().item(), "macro_f1": sum(f1s) / len(f1s)}


@torch.no_grad()
def lm_outputs(model: nn.Module, batches: Iterable[dict], device: str = "auto") -> tuple[torch.Tensor, Metrics]:
    """(completion-token logits, {loss, perplexity}): mean cross-entropy over completion tokens only."""
    dev = resolve_device(device)
    model.to(dev).eval()
    total, count, kept = 0.0, 0, []
    for batch in batches:
        batch = {k: v.to(dev) for k, v in batch.items()}
        with autocast(dev):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        shifted, targets = logits[:, :-1], batch["labels"][:, 1:]
        mask = targets != -100
        total += nn.functional.cross_entropy(shifted[mask], targets[mask], reduction="sum").item()
        count += mask.sum().item()
        kept.append(shifted[mask].cpu())
    if not count:
        raise DataError("the held-out split has no completion tokens to score; raise training.max_length")
    loss = total / count
    return torch.cat(kept), {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: how far merged logits are from unmerged ones."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def better(metric: str, a: float, b: float) -> float:
    """How much better a is than b on `metric` (positive = better), whichever direction the metric runs."""
    return b - a if metric in LOWER_IS_BETTER else a - b


def decide(gate: GateSpec, adapter: Metrics, base: Metrics, production: Metrics | None) -> tuple[bool, list[str]]:
    """(passed, reasons) of the promotion gate. Every test is written so that NaN fails it: a comparison with NaN
    is false, and a gate that asked `gain < required` would pass a NaN metric."""
    metric, reasons = gate.metric, []
    gain = better(metric, adapter[metric], base[metric])
    if math.isnan(gain):
        reasons.append(f"{metric} is not a number (adapter {adapter[metric]}, base {base[metric]}); nothing to compare")
    elif not gain >= gate.min_gain_over_base:
        reasons.append(f"{metric} gain over the base is {gain:+.4f}, below the required {gate.min_gain_over_base:+.4f}")
    if production is not None and gate.must_beat_production:
        versus = better(metric, adapter[metric], production[metric])
        if math.isnan(versus):
            reasons.append(f"{metric} {adapter[metric]} cannot be compared with production's {production[metric]}")
        elif not versus >= 0:
            reasons.append(f"{metric} {adapter[metric]:.4f} is worse than production's {production[metric]:.4f}")
    return not reasons, reasons
