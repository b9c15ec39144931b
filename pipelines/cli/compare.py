"""`loraops adapters compare REF REF` and `adapters map --base NAME`: subspace similarity between registered adapters.

φ(A1, A2, i, j) = ‖V1[:, :i]ᵀ V2[:, :j]‖_F² / min(i, j) over the right-singular vectors of each module's A (the input
directions ΔW acts on), as in the LoRA paper §7.2: 1 where the top subspaces coincide, 0 where they are orthogonal.
Per module the tables give φ(1, 1) (the top direction) and φ(k, k) at k = min(r1, r2) (the whole subspace).
"""

import json
from pathlib import Path
from typing import Any

from lora_core.analysis import read_adapter, subspace_similarity
from registry import AdapterRegistry, RegistryError, VersionRecord
from registry.names import split_ref

from ..tables import render_table


def same_base(first: VersionRecord, second: VersionRecord) -> None:
    if first.base_fingerprint != second.base_fingerprint:
        raise RegistryError(
            f"{first.task} v{first.version} is on base {first.base_name} ({first.base_fingerprint[:12]}) "
            f"and {second.task} v{second.version} on {second.base_name} "
            f"({second.base_fingerprint[:12]}); their subspaces are not comparable: compare versions "
            f"on one base"
        )


def module_phi(
    registry: AdapterRegistry, first: VersionRecord, second: VersionRecord, loaded: dict | None = None
) -> dict[str, dict]:
    """{module: {phi_1_1, phi_k_k, k}} over the modules both adapters adapt. `loaded`: adapters already read, by
    (task, version), so a map fetches and reads each once."""
    same_base(first, second)
    loaded = {} if loaded is None else loaded
    for r in (first, second):
        if (r.task, r.version) not in loaded:
            loaded[r.task, r.version] = read_adapter(registry.fetch(r.task, r.version))
    grids = subspace_similarity(loaded[first.task, first.version], loaded[second.task, second.version])
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


def production_on(registry: AdapterRegistry, base: str) -> list[VersionRecord]:
    """The production version of every task on the base `base` (a name or a fingerprint prefix)."""
    found = [r for r in registry.list_versions(base=base) if "production" in r.aliases]
    fingerprints = {r.base_fingerprint for r in found}
    if len(fingerprints) > 1:
        raise RegistryError(
            f"production adapters on {base!r} sit on {len(fingerprints)} different weights "
            f"({', '.join(sorted(f[:12] for f in fingerprints))}); pass a fingerprint prefix"
        )
    return sorted(found, key=lambda r: r.task)


def task_map(args, print_=print) -> dict[str, Any]:
    """mean φ(k, k) between the production adapters of every task on one base: which tasks adapt the same directions."""
    if not args.base or not args.out:
        raise RegistryError("adapters map needs --base NAME (or fingerprint prefix) and --out DIR")
    registry = AdapterRegistry()
    records = production_on(registry, args.base)
    if len(records) < 2:
        raise RegistryError(
            f"{len(records)} task(s) in production on base {args.base!r}; a map needs at least two "
            f"(see loraops adapters list --base {args.base})"
        )
    names = [r.task for r in records]
    phi = [[1.0] * len(records) for _ in records]  # φ of an adapter with itself; the pairs are filled below
    loaded: dict = {}
    for i, first in enumerate(records):
        for j in range(i + 1, len(records)):
            phi[i][j] = phi[j][i] = mean(module_phi(registry, first, records[j], loaded), "phi_k_k")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "base": records[0].base_name,
        "base_fingerprint": records[0].base_fingerprint,
        "tasks": {r.task: r.version for r in records},
        "mean_phi_k_k": phi,
    }
    (out / "map.json").write_text(json.dumps(result, indent=2) + "\n")
    from lora_core.analysis.plots import plot_task_map

    plot_task_map(phi, names, out / "map.png", f"mean φ(k, k) of production adapters on {records[0].base_name}")
    print_(render_table([("task", *names)] + [(n, *(f"{v:.3f}" for v in row)) for n, row in zip(names, phi)]))
    print_(f"wrote {out / 'map.json'}, {out / 'map.png'}")
    return result
