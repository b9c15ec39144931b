"""What rank does an adapter need? Spectrum per module, amplification, subspace similarity."""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from ..errors import AdapterMismatchError
from .adapter import AdaptedModule, Adapter, BaseWeights, as_adapter
from .spectrum import THRESHOLDS, spectrum


def amplification_factor(
    delta_u: torch.Tensor, delta_v: torch.Tensor, delta_frobenius: float, base_weight: torch.Tensor
) -> tuple[float, float]:
    """LoRA paper §7.3: ‖ΔW‖_F / ‖Uᵀ W V‖_F with U: [d, r], V: [k, r] the singular vectors of ΔW.

    Returns (amplification, ‖Uᵀ W V‖_F). A large factor means ΔW amplifies directions that W
    itself barely uses (their Table 7: ~21.5 at r=4, ~2 at r=64 for GPT-3's W_q).
    """
    projected = float(torch.linalg.matrix_norm(delta_u.T @ base_weight.double() @ delta_v))
    return (delta_frobenius / projected if projected > 0 else float("inf")), projected


N = TypeVar("N", int, float)


@dataclass(frozen=True)
class RankCounts(Generic[N]):
    """Ranks for 90/95/99 % of ‖ΔW‖² and the elbow: one module's, or the largest (recommended) or mean over all."""

    p90: N
    p95: N
    p99: N
    elbow: N

    def as_json(self) -> dict[str, N]:
        return {"90": self.p90, "95": self.p95, "99": self.p99, "elbow": self.elbow}


@dataclass(frozen=True)
class ModuleSpectrum:
    """One adapted module: ΔW's shape [d, k], rank and scale, its spectrum's measures, and with the base W the
    amplification ‖ΔW‖_F / ‖Uᵀ W V‖_F beside ‖Uᵀ W V‖_F and ‖W‖_F."""

    module: str
    shape: tuple[int, int]
    r: int
    scale: float
    frobenius: float
    sigma: list[float]
    cumulative_pve: list[float]
    ranks: RankCounts[int]
    effective_rank: float
    amplification: float | None = None
    projected_base_frobenius: float | None = None
    base_frobenius: float | None = None

    def as_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "module": self.module,
            "shape": list(self.shape),
            "r": self.r,
            "scale": self.scale,
            "frobenius": self.frobenius,
            "sigma": self.sigma,
            "cumulative_pve": self.cumulative_pve,
            **{f"rank_at_{k}": v for k, v in self.ranks.as_json().items() if k != "elbow"},
            "elbow": self.ranks.elbow,
            "effective_rank": self.effective_rank,
        }
        if self.amplification is not None:
            row |= {
                "amplification": self.amplification,
                "projected_base_frobenius": self.projected_base_frobenius,
                "base_frobenius": self.base_frobenius,
            }
        return row


@dataclass(frozen=True)
class AdapterReport:
    """What rank an adapter needs: a row per module and the whole adapter's summary. `recommended` is the largest
    rank any module needs (a uniform rank that keeps at least that share of every module's ‖ΔW‖²); `mean` the
    mean over modules. `mean_amplification` needs the base (None without it)."""

    base_model: str | None
    modules: list[ModuleSpectrum]
    r: int
    frobenius: float
    recommended: RankCounts[int]
    mean: RankCounts[float]
    mean_effective_rank: float
    mean_amplification: float | None

    def as_json(self) -> dict[str, Any]:
        """report.json's layout: {base_model, summary, modules}."""
        summary: dict[str, Any] = {
            "modules": len(self.modules),
            "r": self.r,
            "frobenius": self.frobenius,
            "recommended_rank": self.recommended.as_json(),
            "mean_rank": self.mean.as_json(),
            "mean_effective_rank": self.mean_effective_rank,
        }
        if self.mean_amplification is not None:
            summary["mean_amplification"] = self.mean_amplification
        return {"base_model": self.base_model, "summary": summary, "modules": [m.as_json() for m in self.modules]}


def _module_spectrum(m: AdaptedModule, base: BaseWeights | None, fan_in_fan_out: bool) -> ModuleSpectrum:
    s = spectrum(m.lora_b, m.lora_a, m.scale)
    shape = (m.lora_b.shape[0], m.lora_a.shape[1])
    p90, p95, p99 = (s.rank_at(t) for t in THRESHOLDS)
    row = ModuleSpectrum(
        module=m.path,
        shape=shape,
        r=m.rank,
        scale=m.scale,
        frobenius=s.frobenius,
        sigma=[float(x) for x in s.sigma],
        cumulative_pve=[float(c) for c in s.cumulative_pve],
        ranks=RankCounts(p90, p95, p99, s.elbow),
        effective_rank=s.effective_rank,
    )
    if base is None:
        return row
    w = base.weight(m.path, shape, fan_in_fan_out or m.embedding)
    amplification, projected = amplification_factor(s.u, s.v, s.frobenius, w)
    return replace(
        row,
        amplification=amplification,
        projected_base_frobenius=projected,
        base_frobenius=float(torch.linalg.matrix_norm(w.double())),
    )


def _over_modules(rows: list[ModuleSpectrum], pick: Callable[[list[int]], N]) -> RankCounts[N]:
    return RankCounts(*(pick([getattr(row.ranks, k) for row in rows]) for k in ("p90", "p95", "p99", "elbow")))


def adapter_report(
    adapter: "Adapter | str | Path", base: "BaseWeights | str | Path | dict[str, torch.Tensor] | None" = None
) -> AdapterReport:
    """Per-module spectra and the whole adapter's summary (with `base`: the amplification of each module)."""
    adapter = as_adapter(adapter)
    if base is not None and not isinstance(base, BaseWeights):
        base = BaseWeights(base)
    rows = [_module_spectrum(m, base, adapter.fan_in_fan_out) for m in adapter.modules.values()]
    return AdapterReport(
        base_model=adapter.base_model_name_or_path,
        modules=rows,
        r=max(row.r for row in rows),
        frobenius=sum(row.frobenius**2 for row in rows) ** 0.5,
        recommended=_over_modules(rows, max),
        mean=_over_modules(rows, lambda v: sum(v) / len(v)),
        mean_effective_rank=sum(row.effective_rank for row in rows) / len(rows),
        mean_amplification=None if base is None else sum(row.amplification or 0.0 for row in rows) / len(rows),
    )


def similarity_grid(a_1: torch.Tensor, a_2: torch.Tensor) -> torch.Tensor:
    """φ(i, j) = ‖V1[:, :i]ᵀ V2[:, :j]‖_F² / min(i, j) for i ≤ r1, j ≤ r2 (LoRA paper §7.2).

    A1: [r1, k], A2: [r2, k]; V1, V2 their right-singular vectors ([k, r]). Returns [r1, r2]
    with values in [0, 1]: 1 where the top subspaces coincide, 0 where they are orthogonal.
    """
    if a_1.shape[1] != a_2.shape[1]:
        raise AdapterMismatchError(
            f"A matrices act on different inputs ({a_1.shape[1]} vs {a_2.shape[1]}): "
            "compare adapters of the same base model"
        )
    v_1 = torch.linalg.svd(a_1.double(), full_matrices=False)[2]
    v_2 = torch.linalg.svd(a_2.double(), full_matrices=False)[2]
    overlap = (v_1 @ v_2.T) ** 2
    totals = overlap.cumsum(0).cumsum(1)
    i = torch.arange(1, len(v_1) + 1, dtype=totals.dtype)[:, None]
    j = torch.arange(1, len(v_2) + 1, dtype=totals.dtype)[None, :]
    return totals / torch.minimum(i, j)


def subspace_similarity(
    adapter_1: "Adapter | str | Path", adapter_2: "Adapter | str | Path"
) -> dict[str, torch.Tensor]:
    """φ grid per module the two adapters share."""
    first, second = as_adapter(adapter_1), as_adapter(adapter_2)
    shared = sorted(set(first.modules) & set(second.modules))
    if not shared:
        raise AdapterMismatchError(
            f"the adapters share no module (first: {list(first.modules)[:3]}, "
            f"second: {list(second.modules)[:3]}): compare adapters of the same base and targets"
        )
    return {p: similarity_grid(first.modules[p].lora_a, second.modules[p].lora_a) for p in shared}
