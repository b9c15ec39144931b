"""The analyze step: the adapter's SVD report (lora_core.analysis) written beside it, summed up as typed numbers."""

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from lora_core.analysis import AdapterReport, adapter_report, read_adapter
from lora_core.analysis.plots import plot_ranks, plot_scree, plot_similarity

from .results import Analysis, RankAdvice, Ranking


@dataclass(frozen=True)
class Comparison:
    """The subspace similarity φ of an adapter with another (`loraops analyze --compare`): a grid per shared module."""

    compared_with: str
    grids: dict[str, torch.Tensor]

    @cached_property
    def mean(self) -> torch.Tensor:
        """φ averaged over the shared modules (those with the most common grid shape)."""
        shapes = [tuple(g.shape) for g in self.grids.values()]
        common = max(set(shapes), key=shapes.count)
        return torch.stack([g for g in self.grids.values() if tuple(g.shape) == common]).mean(0)


def write_report(report: AdapterReport, folder: Path, comparison: Comparison | None = None) -> list[Path]:
    """report.json and the plots (scree, ranks; the φ grid when compared) into `folder`; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    document = report.as_json()
    if comparison is not None:
        document["similarity"] = {
            "compared_with": comparison.compared_with,
            "mean_phi": comparison.mean.tolist(),
            "per_module_phi_1_1": {p: float(g[0, 0]) for p, g in comparison.grids.items()},
        }
    (folder / "report.json").write_text(json.dumps(document, indent=2) + "\n")
    written = [
        folder / "report.json",
        plot_scree(report, folder / "scree.png"),
        plot_ranks(report, folder / "ranks.png"),
    ]
    if comparison is not None:
        written.append(plot_similarity(comparison.mean, folder / "similarity.png", "mean φ(i, j) over shared modules"))
    return written


def analyze_adapter(adapter: str, base_path: str | None, out: Path) -> Analysis:
    """Spectrum, PVE, elbow and (with the base) amplification of every module; the report and plots in `out`."""
    report = adapter_report(read_adapter(adapter), base=base_path)
    write_report(report, out)
    advice = report.recommended
    amplification = report.mean_amplification
    return Analysis(
        r=report.r,
        modules=len(report.modules),
        mean_effective_rank=report.mean_effective_rank,
        recommended_rank=RankAdvice(p90=advice.p90, p95=advice.p95, p99=advice.p99, elbow=advice.elbow),
        mean_amplification=amplification if amplification is not None and math.isfinite(amplification) else None,
        folder=str(out),
    )


def spectrum_tags(analysis: Analysis, ranking: Ranking | None = None) -> dict[str, float]:
    """The analysis numbers a version carries as tags: uniform ranks for 90/95/99% of |dW|^2, the elbow, the mean
    effective rank, (the base known) the mean amplification; with promotion.rank, the trained and shipped ranks, the
    compressed adapter's metric delta and the bytes it saved."""
    advice = analysis.recommended_rank
    tags: dict[str, float] = {
        "rank_at_90": advice.p90,
        "rank_at_95": advice.p95,
        "rank_at_99": advice.p99,
        "elbow": advice.elbow,
        "effective_rank": analysis.mean_effective_rank,
    }
    if analysis.mean_amplification is not None:  # None where ΔW is orthogonal to W
        tags["amplification"] = analysis.mean_amplification
    if ranking:
        tags |= {
            "trained_rank": ranking.trained_rank,
            "shipped_rank": ranking.rank,
            "compressed_metric_delta": ranking.metric_delta,
            "compressed_bytes_saved": ranking.bytes_saved,
        }
    return tags
