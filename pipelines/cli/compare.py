"""`loraops adapters compare REF REF` and `adapters map --base NAME`: subspace similarity between registered adapters.

φ(A1, A2, i, j) = ‖V1[:, :i]ᵀ V2[:, :j]‖_F² / min(i, j) over the right-singular vectors of each module's A (the input
directions ΔW acts on), as in the LoRA paper §7.2: 1 where the top subspaces coincide, 0 where they are orthogonal.
Per module the tables give φ(1, 1) (the top direction) and φ(k, k) at k = min(r1, r2) (the whole subspace).
"""

import json
import math
from pathlib import Path
from typing import Any

from lora_core.analysis import read_adapter, subspace_similarity
from registry import AdapterRegistry, RegistryError, VersionRecord
from registry.names import split_ref

from ..tables import render_table
from ..task_map import NEIGHBOURS, TaskMap, build_task_map

MATRIX_LIMIT = 16  # tasks printed as a matrix: 16 columns of 6 characters beside a label still fit 130 columns
LABEL_WIDTH = 28  # task names cut to this many characters in tables (slugs run to 63)


def same_base(first: VersionRecord, second: VersionRecord) -> None:
    if first.base_fingerprint != second.base_fingerprint:
        raise RegistryError(
            f"{first.task} v{first.version} is on base {first.base_name} ({first.base_fingerprint[:12]}) "
            f"and {second.task} v{second.version} on {second.base_name} "
            f"({second.base_fingerprint[:12]}); their subspaces are not comparable: compare versions "
            f"on one base"
        )


def module_phi(registry: AdapterRegistry, first: VersionRecord, second: VersionRecord) -> dict[str, dict]:
    """{module: {phi_1_1, phi_k_k, k}} over the modules both adapters adapt."""
    same_base(first, second)
    grids = subspace_similarity(*(read_adapter(registry.fetch(r.task, r.version)) for r in (first, second)))
    return {
        module: {
            "phi_1_1": float(grid[0, 0]),
            "phi_k_k": float(grid[min(grid.shape) - 1, min(grid.shape) - 1]),
            "k": min(grid.shape),
        }
        for module, grid in grids.items()
    }


def mean(rows: dict[str, dict], key: str) -> float:
    return sum(row[key] for row in rows.values()) / len(rows)


def compare(args, print_=print) -> dict[str, Any]:
    if not args.other:
        raise RegistryError("adapters compare needs two versions, e.g. loraops adapters compare my-task:1 my-task:2")
    registry = AdapterRegistry()
    first, second = (registry.resolve(*split_ref(ref)) for ref in (args.ref, args.other))
    rows = module_phi(registry, first, second)
    result = {
        "first": f"{first.task}:{first.version}",
        "second": f"{second.task}:{second.version}",
        "base_fingerprint": first.base_fingerprint,
        "modules": rows,
        "mean_phi_1_1": mean(rows, "phi_1_1"),
        "mean_phi_k_k": mean(rows, "phi_k_k"),
    }
    if args.json:
        print_(json.dumps(result, indent=2))
        return result
    table = [("module", "phi(1,1)", "phi(k,k)", "k")]
    table += [(m, f"{r['phi_1_1']:.3f}", f"{r['phi_k_k']:.3f}", str(r["k"])) for m, r in rows.items()]
    table.append(("mean", f"{result['mean_phi_1_1']:.3f}", f"{result['mean_phi_k_k']:.3f}", ""))
    print_(f"{result['first']} vs {result['second']} on base {first.base_name} ({first.base_fingerprint[:12]})")
    print_(render_table(table, footer=True))
    return result


def short(name: str, width: int = LABEL_WIDTH) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def phi_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def map_lines(task_map: TaskMap) -> list[str]:
    """Up to MATRIX_LIMIT tasks the whole matrix (columns numbered like the rows); past it each task's nearest."""
    tasks = task_map.tasks
    if len(tasks) <= MATRIX_LIMIT:
        header = ("task", *(str(i) for i in range(1, len(tasks) + 1)))
        rows = [
            (f"{i} {short(t.task)}", *(phi_text(v) for v in row))
            for i, (t, row) in enumerate(zip(tasks, task_map.mean_phi_k_k), 1)
        ]
        return [render_table([header, *rows])]
    rows = [
        (short(t.task), str(t.version), "  ".join(f"{short(n.task)} {n.phi:.2f}" for n in t.nearest) or "-")
        for t in tasks
    ]
    return [
        f"{len(tasks)} tasks, in clustered order: each task's {NEIGHBOURS} nearest by mean phi(k,k) "
        f"(the whole matrix is in map.json and map.png)",
        render_table([("task", "v", "nearest (phi)"), *rows]),
    ]


def task_map(args, print_=print) -> TaskMap:
    """mean φ(k, k) between the production adapters of every task on one base: which tasks adapt the same directions."""
    if not args.base or not args.out:
        raise RegistryError("adapters map needs --base NAME (or fingerprint prefix) and --out DIR")
    result = build_task_map(AdapterRegistry(), args.base)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "map.json").write_text(result.model_dump_json(indent=2) + "\n")
    from lora_core.analysis.plots import plot_task_map

    phi = [[math.nan if v is None else v for v in row] for row in result.mean_phi_k_k]
    names = [t.task for t in result.tasks]
    plot_task_map(phi, names, out / "map.png", f"mean φ(k, k) of production adapters on {result.base}")
    for line in map_lines(result):
        print_(line)
    print_(f"wrote {out / 'map.json'}, {out / 'map.png'}")
    return result
