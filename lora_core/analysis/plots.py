"""PNG plots of an adapter report: scree with cumulative PVE, rank per module, φ heatmap."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .report import AdapterReport  # noqa: E402
from .spectrum import THRESHOLDS  # noqa: E402


def plot_scree(report: AdapterReport, path: str | Path) -> Path:
    """Bars: mean share of ‖ΔW‖² per direction; lines: cumulative PVE per module (thin) and mean
    (thick); dashed: 90/95/99 %; dotted: the recommended elbow."""
    rows = report.modules
    n = max(len(row.sigma) for row in rows)
    padded = torch.tensor([row.cumulative_pve + [row.cumulative_pve[-1]] * (n - len(row.sigma)) for row in rows])
    mean_cum = padded.mean(0)
    mean_pve = torch.diff(mean_cum, prepend=torch.zeros(1))
    x = range(1, n + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar(x, mean_pve, color="#9ecae1", label="share of ‖ΔW‖² (mean over modules)")
    for cum in padded:
        ax.plot(x, cum, color="grey", alpha=0.25, linewidth=0.8)
    ax.plot(x, mean_cum, color="#08519c", linewidth=2.2, marker="o", label="cumulative PVE (mean)")
    recommended = report.recommended
    for t, k in zip(THRESHOLDS, (recommended.p90, recommended.p95, recommended.p99)):
        ax.axhline(t, color="#d94801", linestyle="--", linewidth=0.8)
        ax.text(
            n + 0.4,
            t,
            f"{round(t * 100)}%: r={k}",
            va="center",
            fontsize=8,
            color="#d94801",
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1},
        )
    ax.axvline(recommended.elbow, color="black", linestyle=":", label=f"elbow: r={recommended.elbow}")
    ax.set(
        xlabel="direction i (singular value rank)",
        ylabel="proportion of variance explained",
        ylim=(0, 1.02),
        xlim=(0.4, n + 2.2),
        xticks=list(x),
        title=f"{len(rows)} modules, r={report.r}: rank needed for 90/95/99% = "
        f"{recommended.p90}/{recommended.p95}/{recommended.p99}",
    )
    ax.legend(loc="center right", fontsize=8)
    return _save(fig, path)


def plot_ranks(report: AdapterReport, path: str | Path) -> Path:
    """Per module: rank needed for 90/95/99 % of ‖ΔW‖² and the elbow, against the trained r."""
    rows = report.modules
    names = [_short(row.module) for row in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(rows) + 2), 4.5))
    width = 0.27
    for offset, t, key, color in zip(
        (-width, 0, width), THRESHOLDS, ("p90", "p95", "p99"), ("#c6dbef", "#6baed6", "#08519c")
    ):
        ax.bar(
            [i + offset for i in range(len(rows))],
            [getattr(row.ranks, key) for row in rows],
            width,
            color=color,
            label=f"{round(t * 100)}%",
        )
    ax.scatter(
        range(len(rows)), [row.ranks.elbow for row in rows], color="#d94801", marker="_", s=200, zorder=3, label="elbow"
    )
    ax.plot(range(len(rows)), [row.r for row in rows], color="black", linestyle="--", label="trained r")
    ax.set_xticks(range(len(rows)), names, rotation=70, ha="right", fontsize=7)
    ax.set(ylabel="rank", title="rank each module needs")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_similarity(grid: torch.Tensor, path: str | Path, title: str = "subspace similarity φ(i, j)") -> Path:
    """Heatmap of φ(i, j) as in the LoRA paper's Figure 3: rows i of the first adapter, columns j."""
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(
        grid.numpy(),
        vmin=0,
        vmax=1,
        cmap="viridis",
        origin="upper",
        aspect="auto",
        extent=(0.5, grid.shape[1] + 0.5, grid.shape[0] + 0.5, 0.5),
    )
    fig.colorbar(image, ax=ax, label="φ")
    ax.set(xlabel="j (second adapter)", ylabel="i (first adapter)", title=title)
    return _save(fig, path)


def plot_task_map(phi: list[list[float]], names: list[str], path: str | Path, title: str) -> Path:
    """Heatmap of one similarity per pair of adapters (tasks x tasks, values in [0, 1]; NaN grey: nothing shared).

    It stays readable at a few hundred tasks: the figure grows with the tasks up to 16 inches, labels shrink to
    fit their rows (down to 4 pt) and are cut to 24 characters, and the values are written in the cells only up
    to 20 tasks. Give the tasks in clustered order and similar tasks show as blocks on the diagonal.
    """
    n = len(names)
    side = min(16.0, max(5.0, 0.35 * n + 3))
    font = max(4.0, min(9.0, 260 / max(n, 1)))
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(torch.tensor(phi, dtype=torch.float64).numpy(), vmin=0, vmax=1, cmap=cmap)
    fig.colorbar(image, ax=ax, label="φ", shrink=0.8)
    labels = [name if len(name) <= 24 else name[:23] + "…" for name in names]
    ax.set_xticks(range(n), labels, rotation=90 if n > 20 else 45, ha="center" if n > 20 else "right", fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    if n <= 20:
        for i, row in enumerate(phi):
            for j, value in enumerate(row):
                if value == value:  # not NaN
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_title(title)
    return _save(fig, path)


def _short(module: str) -> str:
    parts = module.split(".")
    numbers = [p for p in parts if p.isdigit()]
    return ".".join(numbers[-1:] + parts[-2:]) if numbers else ".".join(parts[-2:])


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
