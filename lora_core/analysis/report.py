"""What rank does an adapter need? Spectrum per module, amplification, subspace similarity."""

from pathlib import Path
from typing import Any

import torch

from ..errors import AdapterMismatchError
from .adapter import Adapter, BaseWeights, as_adapter
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


def adapter_report(
    adapter: "Adapter | str | Path", base: "BaseWeights | str | Path | dict[str, torch.Tensor] | None" = None
) -> dict[str, Any]:
    """Per-module rows and a whole-adapter summary (recommended uniform ranks: the largest
    per-module rank needed, so every module keeps at least that share of its ‖ΔW‖²)."""
    adapter = as_adapter(adapter)
    if base is not None and not isinstance(base, BaseWeights):
        base = BaseWeights(base)
    rows = []
    for m in adapter.modules.values():
        s = spectrum(m.lora_b, m.lora_a, m.scale)
        row = {
            "module": m.path,
            "shape": [m.lora_b.shape[0], m.lora_a.shape[1]],
            "r": m.rank,
            "scale": m.scale,
            **s.summary(),
        }
        if base is not None:
            w = base.weight(m.path, tuple(row["shape"]), adapter.fan_in_fan_out or m.embedding)
            row["amplification"], row["projected_base_frobenius"] = amplification_factor(s.u, s.v, s.frobenius, w)
            row["base_frobenius"] = float(torch.linalg.matrix_norm(w.double()))
        rows.append(row)
    keys = [f"rank_at_{round(t * 100)}" for t in THRESHOLDS] + ["elbow"]
    summary = {
        "modules": len(rows),
        "r": max(row["r"] for row in rows),
        "frobenius": sum(row["frobenius"] ** 2 for row in rows) ** 0.5,
        "recommended_rank": {k.removeprefix("rank_at_"): max(row[k] for row in rows) for k in keys},
        "mean_rank": {k.removeprefix("rank_at_"): sum(row[k] for row in rows) / len(rows) for k in keys},
        "mean_effective_rank": sum(row["effective_rank"] for row in rows) / len(rows),
    }
    if base is not None:
        summary["mean_amplification"] = sum(row["amplification"] for row in rows) / len(rows)
    return {"base_model": adapter.base_model_name_or_path, "summary": summary, "modules": rows}


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
