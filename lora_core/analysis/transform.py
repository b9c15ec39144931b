"""New adapters from old: compress one to a lower rank, extract one from a full fine-tune.

Both keep, per module, the best rank-k approximation of ΔW (Eckart–Young): its relative
Frobenius error is √(Σ_{i>k} σ_i² / Σ σ_i²), exactly the energy the discarded directions held.
"""

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..config import LoraConfig
from ..errors import AdapterMismatchError, LoraError
from ..injection import resolve_targets
from ..layer import is_conv1d, stored_in_out
from .adapter import AdaptedModule, Adapter, as_adapter
from .spectrum import Spectrum, check_pve, dense_spectrum, spectrum, truncate


@dataclass(frozen=True)
class Reduced:
    """The new adapter, and per module its rank and relative Frobenius error ‖ΔW − ΔW_k‖ / ‖ΔW‖."""

    adapter: Adapter
    ranks: dict[str, int]
    errors: dict[str, float]


def _choose_rank(path: str, s: Spectrum, limit: int, rank: int | None, pve: float | None) -> int:
    if rank is None and pve is not None:
        check_pve(pve)
        return max(1, s.rank_at(pve))
    if rank is None or pve is not None:
        raise LoraError("give exactly one of rank=K or pve=P")
    if rank < 1:
        raise LoraError(f"rank={rank} must be at least 1")
    if rank > limit:
        raise LoraError(f"rank={rank} is above the rank {limit} of {path}: choose rank <= {limit}")
    return rank


def _relative_error(s: Spectrum, k: int) -> float:
    return math.sqrt(max(0.0, 1.0 - float(s.cumulative_pve[k - 1]))) if s.energy > 0 else 0.0


def _ranked_config(config: LoraConfig, ranks: dict[str, int], targets: list[str] | str | None) -> LoraConfig:
    """config with r = the largest rank and rank_pattern naming each module that differs."""
    top = max(ranks.values())
    return config.model_copy(
        update={
            "r": top,
            "target_modules": targets,
            "init": "default",
            "rank_pattern": {re.escape(p): k for p, k in ranks.items() if k != top},
        }
    )


def _factors(s: Spectrum, k: int, scale: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with scale·B·A = U_k Σ_k V_kᵀ."""
    b, a = truncate(s, k)
    root = math.sqrt(scale)
    return (a / root).to(dtype), (b / root).to(dtype)


def compress(
    adapter: "Adapter | str", rank: int | None = None, pve: float | None = None, ranks: dict[str, int] | None = None
) -> Reduced:
    """Each ΔW_m replaced by its best rank-k_m approximation; k from `rank`, `pve` (smallest rank
    keeping that share of ‖ΔW_m‖²) or `ranks` per module. Alpha and rsLoRA are kept; the factors
    absorb the new scale so that s·B·A is preserved."""
    source = as_adapter(adapter)
    spectra = {p: spectrum(m.lora_b, m.lora_a, m.scale) for p, m in source.modules.items()}
    if ranks is not None:
        unknown = sorted(set(ranks) - set(source.modules))
        if unknown:
            raise LoraError(f"ranks names modules the adapter lacks: {unknown[:3]}; use paths from `loraops analyze`")
        chosen = {
            p: _choose_rank(p, s, source.modules[p].rank, ranks.get(p, source.modules[p].rank), None)
            for p, s in spectra.items()
        }
    else:
        chosen = {p: _choose_rank(p, s, source.modules[p].rank, rank, pve) for p, s in spectra.items()}
    config = _ranked_config(source.config, chosen, source.config.target_modules)
    modules = {}
    for path, s in spectra.items():
        old = source.modules[path]
        a, b = _factors(s, chosen[path], config.scaling_for(path), old.lora_a.dtype)
        modules[path] = AdaptedModule(path, a, b, config.scaling_for(path), old.embedding)
    result = Adapter(config, modules, source.extra, source.fan_in_fan_out, source.base_model_name_or_path)
    return Reduced(result, chosen, {p: _relative_error(s, chosen[p]) for p, s in spectra.items()})


def extract(
    base: nn.Module,
    finetuned: nn.Module,
    rank: int | None = None,
    pve: float | None = None,
    target_modules: "list[str] | str" = "all-linear",
    alpha: float | None = None,
) -> tuple[Reduced, list[str]]:
    """A LoRA adapter from a full fine-tune: per target, truncated SVD of W_ft − W0.

    Returns the adapter (modules whose weight did not change are left out) and the names of
    other parameters that changed, which a LoRA on these targets cannot carry.
    """
    base_state, ft_state = base.state_dict(), finetuned.state_dict()
    mismatched = sorted(
        k
        for k in base_state.keys() | ft_state.keys()
        if k not in base_state or k not in ft_state or base_state[k].shape != ft_state[k].shape
    )
    if mismatched:
        raise AdapterMismatchError(
            f"the models differ in architecture ({mismatched[:3]}): pass the base the fine-tune started from"
        )
    targets = resolve_targets(base, LoraConfig(r=1, alpha=1, target_modules=target_modules))
    spectra, limits, conv = {}, {}, False
    for path, module in targets.items():
        delta = ft_state[f"{path}.weight"].double() - base_state[f"{path}.weight"].double()
        conv = conv or is_conv1d(module)
        delta = delta.T if stored_in_out(module) else delta
        if torch.count_nonzero(delta):
            spectra[path], limits[path] = dense_spectrum(delta), min(delta.shape)
    if not spectra:
        raise LoraError("no target weight differs between the two models: nothing to extract")
    chosen = {p: _choose_rank(p, s, limits[p], rank, pve) for p, s in spectra.items()}
    top = max(chosen.values())
    config = _ranked_config(
        LoraConfig(r=top, alpha=alpha or top, target_modules=sorted(chosen)), chosen, sorted(chosen)
    )
    modules = {}
    for path, s in spectra.items():
        a, b = _factors(s, chosen[path], config.scaling_for(path), base_state[f"{path}.weight"].dtype)
        modules[path] = AdaptedModule(path, a, b, config.scaling_for(path), isinstance(targets[path], nn.Embedding))
    name = getattr(getattr(base, "config", None), "_name_or_path", None) or None
    adapter = Adapter(config, modules, {}, conv, name)
    captured = {f"{p}.weight" for p in targets}
    uncaptured = sorted(k for k in base_state if k not in captured and not torch.equal(base_state[k], ft_state[k]))
    return Reduced(adapter, chosen, {p: _relative_error(s, chosen[p]) for p, s in spectra.items()}), uncaptured
