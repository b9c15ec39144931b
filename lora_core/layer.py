"""LoRA layers: a wrapper that owns a frozen base layer and adds named low-rank updates.

For a base layer computing h = W0·x (+ b), adapter `name` adds s·B(A(dropout(x))):
A: [r, in], B: [out, r], s = alpha / r (or alpha / √r). W0 is [out, in] for nn.Linear and
stored transposed, [in, out], for transformers' GPT-2 Conv1D. An nn.Embedding is the same map on one-hot token
vectors (in = the vocabulary, out = the embedding width, W0 stored [in, out]): its update looks up the token's column
of A (PEFT's lora_embedding_A / lora_embedding_B, no dropout, as PEFT).
"""

import contextlib
import copy
import math
from typing import Any, cast

import torch
from torch import nn
from torch.nn import functional as F

from .errors import LoraError, MergeError


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a Linear whose weight is stored as [in, out]."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def is_wrappable(module: nn.Module) -> bool:
    """A linear layer ("all-linear" wraps these; an embedding is wrapped only when named)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def can_wrap(module: nn.Module) -> bool:
    return is_wrappable(module) or isinstance(module, nn.Embedding)


def stored_in_out(module: nn.Module) -> bool:
    """The layer stores W as [in, out] (Conv1D, an nn.Embedding): ΔW = (s·B·A)ᵀ there."""
    return is_conv1d(module) or isinstance(module, nn.Embedding)


def layer_weight(module: nn.Module) -> torch.Tensor:
    """W of a wrappable layer: [out, in] for nn.Linear, [in, out] for Conv1D and nn.Embedding.

    nn.Module types its attributes as Tensor | Module; a Linear or Conv1D weight is a Parameter.
    """
    return cast(torch.Tensor, module.weight)


def delta_weight(
    lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, fan_in_fan_out: bool = False
) -> torch.Tensor:
    """ΔW = s·B·A in float32: [out, in], or [in, out] when the base stores W transposed."""
    delta = (lora_b.float() @ lora_a.float()) * scaling
    return delta.T if fan_in_fan_out else delta


@torch.no_grad()
def check_delta(
    lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, dtype: torch.dtype, name: str = "default"
) -> None:
    """Refuse an update that could put NaN/Inf into a `dtype` weight: the factors must be finite and
    |s|·r·max|B|·max|A|, a bound on every entry of ΔW, well inside the accumulator's range."""
    a, b = lora_a.detach(), lora_b.detach()
    bound = (
        abs(scaling) * a.shape[0] * b.abs().max().float() * a.abs().max().float()
        if a.numel() and b.numel()
        else torch.tensor(0.0)
    )
    limit = torch.finfo(dtype if dtype == torch.float16 else torch.float32).max / 2
    if not torch.isfinite(bound) or bound > limit:
        raise MergeError(
            f"merging adapter {name!r} would write NaN/Inf into the base weights; "
            "the adapter is corrupt or diverged: retrain it or lower the learning rate"
        )


@torch.no_grad()
def add_delta_(
    weight: torch.Tensor,
    lora_a: torch.Tensor,
    lora_b: torch.Tensor,
    scaling: float,
    fan_in_fan_out: bool = False,
    name: str = "default",
) -> torch.Tensor:
    """weight += s·B·A in place: one fused addmm for float32, else ΔW in float32 added with one rounding.
    Checked (check_delta) before anything is written."""
    check_delta(lora_a, lora_b, scaling, weight.dtype, name)
    a, b = lora_a.detach().float(), lora_b.detach().float()
    left, right = (a.T, b.T) if fan_in_fan_out else (b, a)
    if weight.dtype == torch.float32:
        weight.addmm_(left, right, alpha=scaling)
    else:  # the sum is formed in float32 inside add_ and rounded to the weight's dtype once
        weight.add_(left @ right, alpha=scaling)
    return weight


def adapter_dtype(weight: torch.Tensor) -> torch.dtype:
    """Adapters train in float32 on half-precision bases (small, and fp16/bf16 Adam is fragile)."""
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


class LoraLayer(nn.Module):
    """Wraps `base_layer` (nn.Linear, Conv1D or nn.Embedding) and holds any number of named adapters.

    At most one adapter is active; `merged_adapter` names the one whose update is currently
    folded into the base weight (then the forward is the base layer alone).
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.embedding = isinstance(base_layer, nn.Embedding)
        self.fan_in_fan_out = stored_in_out(base_layer)
        w = layer_weight(base_layer)
        self.in_features, self.out_features = (
            (w.shape[0], w.shape[1]) if self.fan_in_fan_out else (w.shape[1], w.shape[0])
        )
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active_adapter: str | None = None
        self.merged_adapter: str | None = None

    @property
    def weight(self) -> torch.Tensor:
        return layer_weight(self.base_layer)

    @property
    def bias(self) -> torch.Tensor | None:
        return cast(torch.Tensor | None, self.base_layer.bias)

    @property
    def pissa_adapter(self) -> str | None:
        """The adapter whose PiSSA init rewrote W0 to the residual W0 − s·B0·A0, if any."""
        return next((n for n in self.lora_A if hasattr(self, f"pissa_a0_{n}")), None)

    def add_adapter(self, name: str, r: int, scaling: float, dropout: float, init: str) -> None:
        if name in self.lora_A:
            raise LoraError(
                f"adapter {name!r} already exists on this layer; delete_adapter() it first or pick another name"
            )
        if init == "pissa" and self.embedding:
            raise LoraError("init='pissa' applies to linear layers; leave the embedding out of target_modules for it")
        if self.pissa_adapter or (init == "pissa" and len(self.lora_A)):
            raise LoraError(
                "a PiSSA adapter rewrites the base weight and cannot share a layer with another adapter; "
                "use init='default' for several adapters on one base"
            )
        w = self.weight
        dtype = adapter_dtype(w)
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=dtype)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=dtype)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 and not self.embedding else nn.Identity()
        self.scaling[name] = scaling
        if init == "pissa":
            self._init_pissa(name, r, scaling)
        else:
            self._init_zero_update(name, r, init)

    def factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(A: [r, in], B: [out, r]) of adapter `name`: the weights of its two bias-free nn.Linear."""
        return cast(nn.Linear, self.lora_A[name]).weight, cast(nn.Linear, self.lora_B[name]).weight

    def _init_zero_update(self, name: str, r: int, init: str) -> None:
        a, b = self.factors(name)
        if self.embedding:
            # A = 0 (a looked-up column of a Kaiming A would be tiny) and B drawn like the embedding it adapts,
            # N(0, std(W0)²): the LoRA paper's and PEFT's N(0, 1) is nn.Embedding's own init, but a trained
            # embedding's entries are 18x smaller (MiniLM's std 0.056), and there each Adam step on A moved a token's
            # row by about a fifth of its size: foldoc-subjects 67.3 against 77.5 without the embedding (seed 0)
            nn.init.zeros_(a)
            nn.init.normal_(b, std=self.weight.float().std().item())
            return
        if init == "gaussian":
            nn.init.normal_(a, std=1.0 / r)
        else:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        nn.init.zeros_(b)

    @torch.no_grad()
    def _init_pissa(self, name: str, r: int, scaling: float) -> None:
        """W0 = U S Vᵀ; B = U_r √S_r / √s, A = √S_r V_rᵀ / √s, so s·BA is W0's best rank-r part."""
        w = self.weight
        w0 = w.float().T if self.fan_in_fan_out else w.float()
        u, s, vh = torch.linalg.svd(w0, full_matrices=False)
        root = (s[:r] / scaling).sqrt()
        a, b = root[:, None] * vh[:r], u[:, :r] * root[None, :]
        lora_a, lora_b = self.factors(name)
        lora_a.copy_(a)
        lora_b.copy_(b)
        # Kept to undo the residual on delete and to export a plain LoRA adapter on save.
        self.register_buffer(f"pissa_a0_{name}", a.clone(), persistent=False)
        self.register_buffer(f"pissa_b0_{name}", b.clone(), persistent=False)
        w.copy_((w.float() - delta_weight(a, b, scaling, self.fan_in_fan_out)).to(w.dtype))

    def pissa_init_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not hasattr(self, f"pissa_a0_{name}"):
            return None
        return getattr(self, f"pissa_a0_{name}"), getattr(self, f"pissa_b0_{name}")

    def remove_adapter(self, name: str) -> None:
        if self.merged_adapter == name:
            raise MergeError(f"adapter {name!r} is merged into the base weights; unmerge() before deleting it")
        init = self.pissa_init_factors(name)
        if init is not None:  # give back the W0 that PiSSA's residual took away
            w = self.weight
            with torch.no_grad():
                w.copy_((w.float() + delta_weight(*init, self.scaling[name], self.fan_in_fan_out)).to(w.dtype))
            delattr(self, f"pissa_a0_{name}")
            delattr(self, f"pissa_b0_{name}")
        for store in (self.lora_A, self.lora_B, self.lora_dropout):
            del store[name]
        del self.scaling[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def delta_weight(self, name: str) -> torch.Tensor:
        """ΔW of adapter `name` in float32, laid out like the base weight."""
        return delta_weight(*self.factors(name), self.scaling[name], self.fan_in_fan_out)

    def merge(self) -> None:
        """W ← W + s·B·A for the active adapter, in place (float32 accumulation for half-precision W)."""
        if self.merged_adapter is not None:
            raise MergeError(f"adapter {self.merged_adapter!r} is already merged; unmerge() before merging again")
        name = self.active_adapter
        if name is None:
            raise MergeError("no active adapter to merge; set_active_adapter(model, NAME) first")
        add_delta_(self.weight, *self.factors(name), self.scaling[name], self.fan_in_fan_out, name)
        self.merged_adapter = name

    def unmerge(self) -> None:
        """W ← W − s·B·A: restores W0 up to float32 rounding (dtype rounding for half weights)."""
        name = self.merged_adapter
        if name is None:
            raise MergeError("nothing is merged; call merge() first")
        add_delta_(self.weight, *self.factors(name), -self.scaling[name], self.fan_in_fan_out, name)
        self.merged_adapter = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        active = self.active_adapter
        name = active if active is not None and active in self.lora_A else None
        if self.merged_adapter is not None:
            return result
        if name is None:
            pissa = self.pissa_adapter
            init = None if pissa is None else self.pissa_init_factors(pissa)
            if pissa is None or init is None:
                return result
            # Base-only output of a PiSSA layer: the residual plus the initial top-r part.
            a0, b0 = init
            return result + (x.to(a0.dtype) @ a0.T @ b0.T * self.scaling[pissa]).to(result.dtype)
        lora_a, lora_b = cast(nn.Linear, self.lora_A[name]), self.lora_B[name]
        # bf16 training on a CPU (pipelines.device): the base's matmul runs in bf16, the small update in the
        # adapter's float32, and a float32 base's sum stays float32, so the update is not rounded to the bf16 grid of
        # the base's output (five tasks, 3 seeds: means within about a standard error of float32 training's; plain
        # autocast, update and sum in bf16, cost 1-3 points: docs/quality.md). A bf16 base adds it in bf16, as
        # without autocast.
        cpu_bf16 = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
        with torch.autocast("cpu", enabled=False) if cpu_bf16 else contextlib.nullcontext():
            if self.embedding:
                update = lora_b(F.embedding(x, lora_a.weight.T, cast(nn.Embedding, self.base_layer).padding_idx))
            else:
                update = lora_b(lora_a(self.lora_dropout[name](x.to(lora_a.weight.dtype))))
        if cpu_bf16 and self.weight.dtype == torch.float32:
            result = result.float()
        # one fused pass: result += s·update (the base output is not needed in backward)
        if update.dtype == result.dtype:
            return result.add_(update, alpha=self.scaling[name])
        return result + (update * self.scaling[name]).to(result.dtype)

    def extra_repr(self) -> str:
        ranks = {n: a.out_features for n, a in self.lora_A.items()}
        return f"in={self.in_features}, out={self.out_features}, adapters={ranks}, active={self.active_adapter!r}"


class ModulesToSave(nn.Module):
    """A module trained in full per adapter (e.g. a classifier head); the original stays frozen."""

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None

    def add_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            raise LoraError(f"adapter {name!r} already has a copy of this module; pick another name")
        self.modules_to_save[name] = copy.deepcopy(self.original_module)

    def active_module(self) -> nn.Module:
        name = self.active_adapter
        if name is not None and name in self.modules_to_save:
            return self.modules_to_save[name]
        return self.original_module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module()(*args, **kwargs)
