"""The rank an adapter ships at (promotion.rank): the low-rank analysis decides, the gate confirms.

auto: k = the smallest uniform rank that keeps promotion.rank_pve of ‖ΔW_m‖² in every module m (the largest
per-module rank_at(pve)); or the number given. Each ΔW_m is replaced by its best rank-k approximation (Eckart–Young:
`lora_core.analysis.compress`), and the compressed adapter goes through the same evaluation as the trained one: the
gate against the base and production, the merge check, and at most promotion.rank_tolerance below the trained
adapter on gate.metric. Only then does it ship; otherwise the trained adapter ships and the reason is recorded.
"""

import shutil
from pathlib import Path

from lora_core.analysis import Adapter, compress, read_adapter
from lora_core.analysis.spectrum import spectrum
from lora_core.peft_format import WEIGHTS_FILE

from .adapter_files import copy_side_files
from .evaluation import better
from .results import Evaluation, PreparedData, ProductionVersion, Ranking
from .spec import TaskSpec
from .steps import evaluate_adapter


def uniform_rank(adapter: Adapter, pve: float) -> int:
    """The smallest rank k such that every module keeps at least `pve` of its ‖ΔW‖² in its top k directions."""
    return max(max(1, spectrum(m.lora_b, m.lora_a, m.scale).rank_at(pve)) for m in adapter.modules.values())


def choose_rank(
    spec: TaskSpec,
    prepared: PreparedData,
    base_path: Path,
    trained: str,
    evaluation: Evaluation,
    production: ProductionVersion | None,
    out: Path,
) -> Ranking:
    """The adapter to ship (the compressed one in `out` when it passes, else the trained one) and why."""
    p, metric = spec.promotion, spec.gate.metric
    source = read_adapter(trained)
    r = source.config.r
    k = int(p.rank) if isinstance(p.rank, int) else uniform_rank(source, p.rank_pve)
    kept = Ranking(
        trained_rank=r,
        rank=r,
        shipped=False,
        adapter=trained,
        evaluation=evaluation,
        metric_delta=0.0,
        bytes_saved=0,
        reason=f"rank for {p.rank_pve:.0%} of |dW|^2 is {k}, the trained rank: nothing to cut",
    )
    if k >= r:
        return kept
    shutil.rmtree(out, ignore_errors=True)
    compress(source, rank=k).adapter.save(out)
    copy_side_files(Path(trained), out)  # predictions still need the class names and the prompt format
    compressed = evaluate_adapter(spec, prepared, base_path, str(out), production)
    delta = better(metric, compressed.adapter[metric], evaluation.adapter[metric])
    saved = (Path(trained) / WEIGHTS_FILE).stat().st_size - (out / WEIGHTS_FILE).stat().st_size
    measured = kept.model_copy(update={"metric_delta": delta, "bytes_saved": saved})
    if not compressed.passed:
        return measured.model_copy(update={"reason": f"r={k} fails the gate: {'; '.join(compressed.reasons)}"})
    if not delta >= -p.rank_tolerance:  # NaN too: a score that cannot be compared does not ship
        return measured.model_copy(
            update={
                "reason": f"r={k} scores {delta:+.4f} {metric} against r={r}, beyond "
                f"promotion.rank_tolerance {p.rank_tolerance:g}"
            }
        )
    return measured.model_copy(
        update={
            "rank": k,
            "shipped": True,
            "adapter": str(out),
            "evaluation": compressed,
            "reason": f"r={k} of {r} passes the gate ({delta:+.4f} {metric}, {saved:,} bytes smaller)",
        }
    )
