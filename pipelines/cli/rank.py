"""`loraops analyze | compress | extract`: what rank an adapter needs, and adapters of lower rank."""

from pathlib import Path
from typing import Any

import torch

from lora_core import LoraError
from lora_core.analysis import adapter_report, compress, extract, read_adapter, subspace_similarity

from ..analysis import write_report
from ..tables import render_table

COLUMNS = ("module", "shape", "r", "|dW|_F", "90%", "95%", "99%", "elbow", "eff.rank", "amplif.")


def format_table(report: dict[str, Any]) -> str:
    rows = [COLUMNS]
    for m in report["modules"]:
        amp = f"{m['amplification']:.1f}" if "amplification" in m else "-"
        rows.append(
            (
                m["module"],
                "x".join(map(str, m["shape"])),
                str(m["r"]),
                f"{m['frobenius']:.4f}",
                str(m["rank_at_90"]),
                str(m["rank_at_95"]),
                str(m["rank_at_99"]),
                str(m["elbow"]),
                f"{m['effective_rank']:.2f}",
                amp,
            )
        )
    s = report["summary"]
    rec = s["recommended_rank"]
    rows.append(
        (
            "all modules (uniform rank)",
            "",
            str(s["r"]),
            f"{s['frobenius']:.4f}",
            str(rec["90"]),
            str(rec["95"]),
            str(rec["99"]),
            str(rec["elbow"]),
            f"{s['mean_effective_rank']:.2f}",
            f"{s['mean_amplification']:.1f}" if "mean_amplification" in s else "-",
        )
    )
    return render_table(rows, footer=True)


def mean_similarity(grids: dict[str, torch.Tensor]) -> torch.Tensor:
    """φ averaged over the shared modules (those with the most common grid shape)."""
    shapes = [tuple(g.shape) for g in grids.values()]
    common = max(set(shapes), key=shapes.count)
    return torch.stack([g for g in grids.values() if tuple(g.shape) == common]).mean(0)


def analyze(adapter_dir: str, base: str | None, compare: str | None, out: str | None, print_=print) -> dict[str, Any]:
    adapter = read_adapter(adapter_dir)
    report = adapter_report(adapter, base=base)
    print_(format_table(report))
    if compare:
        grids = subspace_similarity(adapter, compare)
        grid = mean_similarity(grids)
        report["similarity"] = {
            "compared_with": str(compare),
            "mean_phi": grid.tolist(),
            "per_module_phi_1_1": {p: float(g[0, 0]) for p, g in grids.items()},
        }
        print_(
            f"subspace similarity with {compare}: mean phi(1,1) = {float(grid[0, 0]):.3f}, "
            f"phi({grid.shape[0]},{grid.shape[1]}) = {float(grid[-1, -1]):.3f} over {len(grids)} modules"
        )
    if out:
        written = write_report(report, Path(out), grid if compare else None)
        print_("wrote " + ", ".join(str(p) for p in written))
    return report


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
