"""The task map of one base: mean φ(k, k) between the production adapters of every task on it (which tasks adapt the
same input directions), in an order that keeps similar tasks together, with each task's nearest tasks.

Each production adapter is fetched once (a verified copy in the registry's cache) and read once: the batched
computation and its memory bound are in lora_core.analysis.pairwise.
"""

import math

from pydantic import BaseModel, ConfigDict

from lora_core.analysis.pairwise import cluster_order, nearest, pairwise_similarity
from registry import AdapterRegistry, RegistryError, VersionRecord

from .production import production_versions

NEIGHBOURS = 3  # nearest tasks listed per task


class Neighbour(BaseModel):
    model_config = ConfigDict(frozen=True)
    task: str
    phi: float


class MappedTask(BaseModel):
    """One task of the map: its production version and its nearest tasks, most similar first."""

    model_config = ConfigDict(frozen=True)
    task: str
    version: int
    nearest: list[Neighbour]


class TaskMap(BaseModel):
    """`tasks` in clustered order; mean_phi_k_k[i][j] between tasks i and j of that order (None: no module shared)."""

    model_config = ConfigDict(frozen=True)
    base: str
    base_fingerprint: str
    tasks: list[MappedTask]
    mean_phi_k_k: list[list[float | None]]


def one_base(records: list[VersionRecord], base: str) -> None:
    fingerprints = {r.base_fingerprint for r in records}
    if len(fingerprints) > 1:
        raise RegistryError(
            f"production adapters on {base!r} sit on {len(fingerprints)} different weights "
            f"({', '.join(sorted(f[:12] for f in fingerprints))}); pass a fingerprint prefix"
        )


def build_task_map(registry: AdapterRegistry, base: str, neighbours: int = NEIGHBOURS) -> TaskMap:
    """The map of the production adapters on `base` (a name or a fingerprint prefix)."""
    records = production_versions(registry, base=base)
    one_base(records, base)
    if len(records) < 2:
        raise RegistryError(
            f"{len(records)} task(s) in production on base {base!r}; a map needs at least two "
            f"(see loraops adapters list --base {base})"
        )
    similarity = pairwise_similarity([registry.fetch(r.task, r.version) for r in records])
    order = cluster_order(similarity.phi)
    phi = similarity.phi[order][:, order]
    found = nearest(phi, neighbours)
    tasks = [
        MappedTask(
            task=records[i].task,
            version=records[i].version,
            nearest=[Neighbour(task=records[order[j]].task, phi=value) for j, value in found[row]],
        )
        for row, i in enumerate(order)
    ]
    return TaskMap(
        base=records[0].base_name,
        base_fingerprint=records[0].base_fingerprint,
        tasks=tasks,
        mean_phi_k_k=[[None if math.isnan(v) else v for v in row] for row in phi.tolist()],
    )
