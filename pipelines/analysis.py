"""The analyze step: the adapter's SVD report (lora_core.analysis) written beside it, summed up as typed numbers."""

import json
import math
from pathlib import Path
from typing import Any

import torch

from lora_core.analysis import adapter_report, read_adapter
from lora_core.analysis.plots import plot_ranks, plot_scree, plot_similarity

from .results import Analysis, RankAdvice, Ranking


def write_report(report: dict[str, Any], folder: Path, similarity: torch.Tensor | None = None) -> list[Path]:
    """report.json and the plots (scree, ranks; the φ grid when compared) into `folder`; returns what was written."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    written = [
        folder / "report.json",
        plot_scree(report, folder / "scree.png"),
        plot_ranks(report, folder / "ranks.png"),
    ]
    if similarity is not None:
        written.append(plot_similarity(similarity, folder / "similarity.png", "mean φ(i, j) over shared modules"))
    return written


def analyze_adapter(adapter: str, base_path: str | None, out: Path) -> Analysis:
    """Spectrum, PVE, elbow and (with the base) amplification of every module; the report and plots in `out`."""
    report = adapter_report(read_adapter(adapter), base=base_path)
    write_report(report, out)
    s = report["summary"]
    advice = s["recommended_rank"]
    amplification = s.get("mean_amplification")
    return Analysis(
        r=s["r"],
        modules=s["modules"],
        mean_effective_rank=s["mean_effective_rank"],
        recommended_rank=RankAdvice(p90=advice["90"], p95=advice["95"], p99=advice["99"], elbow=advice["elbow"]),
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
