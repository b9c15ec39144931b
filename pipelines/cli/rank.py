"""`loraops analyze | compress | extract`: what rank an adapter needs, and adapters of lower rank."""

from pathlib import Path

from lora_core import LoraError
from lora_core.analysis import (
    AdapterReport,
    RankCounts,
    adapter_report,
    compress,
    extract,
    read_adapter,
    subspace_similarity,
)

from ..analysis import Comparison, write_report
from ..tables import render_table

COLUMNS = ("module", "shape", "r", "|dW|_F", "90%", "95%", "99%", "elbow", "eff.rank", "amplif.")


def format_table(report: AdapterReport) -> str:
    rows = [COLUMNS]
    for m in report.modules:
        rows.append(
            (
                m.module,
                "x".join(map(str, m.shape)),
                str(m.r),
                f"{m.frobenius:.4f}",
                *_ranks(m.ranks),
                f"{m.effective_rank:.2f}",
                _amplification(m.amplification),
            )
        )
    rows.append(
        (
            "all modules (uniform rank)",
            "",
            str(report.r),
            f"{report.frobenius:.4f}",
            *_ranks(report.recommended),
            f"{report.mean_effective_rank:.2f}",
            _amplification(report.mean_amplification),
        )
    )
    return render_table(rows, footer=True)


def _ranks(ranks: RankCounts) -> tuple[str, str, str, str]:
    return str(ranks.p90), str(ranks.p95), str(ranks.p99), str(ranks.elbow)


def _amplification(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def analyze(
    adapter_dir: str, base: str | None, compare: str | None, out: str | None, print_=print
) -> tuple[AdapterReport, Comparison | None]:
    adapter = read_adapter(adapter_dir)
    report = adapter_report(adapter, base=base)
    print_(format_table(report))
    comparison = None
    if compare:
        comparison = Comparison(str(compare), subspace_similarity(adapter, compare))
        grid = comparison.mean
        print_(
            f"subspace similarity with {compare}: mean phi(1,1) = {float(grid[0, 0]):.3f}, "
            f"phi({grid.shape[0]},{grid.shape[1]}) = {float(grid[-1, -1]):.3f} over {len(comparison.grids)} modules"
        )
    if out:
        written = write_report(report, Path(out), comparison)
        print_("wrote " + ", ".join(str(p) for p in written))
    return report, comparison


def _print_reduction(result, out: str, print_) -> None:
    width = max(len(p) for p in result.ranks)
    for path in result.ranks:
        print_(f"{path.ljust(width)}  rank {result.ranks[path]:3d}  relative error {result.errors[path]:.2e}")
    result.adapter.save(out)
    print_(f"wrote {out} (PEFT format, r={result.adapter.config.r})")


def compress_command(adapter_dir: str, rank: int | None, pve: float | None, out: str, print_=print) -> None:
    _print_reduction(compress(adapter_dir, rank=rank, pve=pve), out, print_)


def load_hf_model(folder: str):
    """The model class the checkpoint names (config.architectures), from a local folder."""
    import transformers

    if not Path(folder, "config.json").is_file():
        raise LoraError(f"{folder} has no config.json: pass a Hugging Face model folder")
    config = transformers.AutoConfig.from_pretrained(folder)
    name = (config.architectures or ["AutoModel"])[0]
    cls = getattr(transformers, name, transformers.AutoModel)
    return cls.from_pretrained(folder)


def extract_command(base: str, finetuned: str, rank: int | None, pve: float | None, out: str, print_=print) -> None:
    result, uncaptured = extract(load_hf_model(base), load_hf_model(finetuned), rank=rank, pve=pve)
    _print_reduction(result, out, print_)
    if uncaptured:
        print_(
            f"note: {len(uncaptured)} other parameters changed and are not in the adapter "
            f"(LoRA carries target weights only): {', '.join(uncaptured[:5])}"
        )
