"""Dropout that costs less on CPU, for training.

On a CPU, torch draws a dropout mask one random number per element (`bernoulli_`): in a MiniLM train step that was
14% of the time, more than the LoRA update itself. Here each 64-bit random word gives four 16-bit draws, so the mask
costs about a quarter as much; an element is dropped with probability round(p·65536)/65536 (p within 8e-6), and
kept ones are scaled by 1/(1-p) as nn.Dropout does. Same distribution, other random numbers: runs stay
reproducible from their seed, not bit-equal to nn.Dropout's. On CUDA, where torch's own dropout is a fused kernel,
nothing changes.

`cpu_dropout(model)` applies it to a model while training: every nn.Dropout module, and the dropout on attention
probabilities of models that take transformers' "sdpa" attention (there it is not a module but an argument).
"""

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "loraops_cpu_dropout"


def drop(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout with the mask drawn from 16-bit slices of 64-bit random words (CPU); torch's own elsewhere."""
    if p <= 0.0:
        return x
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, training=True)
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    keep = words.view(torch.int16)[:n].view(x.shape) >= round(p * 65536) - 32768
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


class CpuDropout(nn.Dropout):
    """nn.Dropout drawing its mask with `drop`: what an nn.Dropout becomes inside `cpu_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop(x, self.p) if self.training else x


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, except with dropout on CPU: softmax(QKᵀ·scale + mask) through `drop`, then
    V, as SDPA's own math path computes it (its fused CPU kernels take no dropout)."""
    if dropout <= 0.0 or query.device.type != "cpu" or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = (query @ key.transpose(-2, -1)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    elif causal and query.shape[2] > 1:
        q, k = query.shape[2], key.shape[2]
        future = torch.ones(q, k, dtype=torch.bool, device=query.device).triu(k - q + 1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    probs = drop(torch.softmax(scores, dim=-1), dropout)
    return (probs @ value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, attention)
# the masks sdpa takes (a name without one gets no mask at all: padding would be attended to)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextlib.contextmanager
def cpu_dropout(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Within: `model`'s dropout (its nn.Dropout modules, and sdpa attention's) draws masks with `drop` when it runs
    on the CPU. Everything is put back on the way out, so evaluation, merging and saving see the model as it was."""
    if device.type != "cpu":
        yield
        return
    swapped = [m for m in model.modules() if type(m) is nn.Dropout]
    sdpa = getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa"
    set_attention: Callable[[str], None] | None = getattr(model, "set_attn_implementation", None) if sdpa else None
    for m in swapped:
        m.__class__ = CpuDropout
    if set_attention:
        set_attention(ATTENTION)
    try:
        yield
    finally:
        for m in swapped:
            m.__class__ = nn.Dropout
        if set_attention:
            set_attention("sdpa")
