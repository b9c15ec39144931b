"""What a serving engine needs to serve the production adapters of each base, sized for hundreds of adapters.

One engine process serves one base; per base the plan lists the adapters (where each is promoted, where the engine
host reads it, the command that puts it there), the merged models (served as models of their own) and the sizing:

- vLLM `--max-loras`: adapters in one batch. Each slot reserves GPU memory at `--max-lora-rank` on every LoRA layer
  up front (Llama-3-8B, all linear layers, rank 16, bf16: ~84 MB a slot), and a request for an adapter without a
  slot waits a step for one, it is not refused: so the slots are capped at MAX_LORAS, not one per adapter.
- vLLM `--max-cpu-loras`: adapters kept in host memory, so that a request for one not in a slot is a copy to the
  GPU, not a read from disk: every adapter, as far as CPU_CACHE_BYTES holds them (the adapter's file size counts:
  an upper bound, a float32 file takes half in a bf16 engine).
- vLLM `--max-lora-rank`: the smallest value vLLM accepts that holds the largest rank.
- Past INLINE_LIMIT adapters vLLM gets no `--lora-modules` list: it loads each adapter by name at its first request
  from `<lora_dir>/<name>/` (runtime loading and the `lora_filesystem_resolver` plugin, vLLM >= 0.9).
- More adapters than one replica's cache holds (CPU_CACHE_BYTES // the largest adapter) get a warning naming how
  many replicas hold them all.
"""

import math
import shlex
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lora_core.peft_format import WEIGHTS_FILE, PeftConfig, read_peft_config
from registry import AdapterRegistry, RegistryError, VersionRecord
from registry.engines import max_lora_rank
from registry.s3 import is_s3_uri

from .production import production_versions

MAX_LORAS = 16  # vLLM adapters per batch (GPU slots); see the module docstring
INLINE_LIMIT = 16  # up to this many adapters vLLM is given them all with --lora-modules at start
CPU_CACHE_BYTES = 16 * 2**30  # host memory one replica gives its adapter cache: a quarter of a 64 GiB GPU host


class ServedAdapter(BaseModel):
    """One production adapter: `path` is where the engine host reads it, `fetch` the command that puts it there."""

    model_config = ConfigDict(frozen=True)
    name: str
    version: int
    uri: str
    path: str
    fetch: str | None
    rank: int
    bytes: int


class MergedModel(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    version: int
    uri: str | None


class Sizing(BaseModel):
    """How one engine replica is set up for the adapters of a base, and how many replicas hold them all."""

    model_config = ConfigDict(frozen=True)
    max_loras: int
    max_cpu_loras: int
    max_lora_rank: int
    per_replica: int  # adapters one replica's cache holds
    replicas: int
    inline: bool  # vLLM: --lora-modules at start (few adapters) or loaded by name at the first request (many)


class BaseGroup(BaseModel):
    model_config = ConfigDict(frozen=True)
    base: str
    fingerprint: str
    adapters: list[ServedAdapter]
    merged: list[MergedModel]
    sizing: Sizing | None  # None: no adapter to serve on this base

    @property
    def warning(self) -> str | None:
        """One line when one replica cannot keep every adapter of this base in memory."""
        s = self.sizing
        if s is None or s.replicas <= 1:
            return None
        largest = max(a.bytes for a in self.adapters)
        return (
            f"# warning: {len(self.adapters)} adapters of up to {_mib(largest)} are more than one replica keeps in "
            f"memory ({s.per_replica} in {_mib(CPU_CACHE_BYTES)}: max-cpu-loras x adapter size); run {s.replicas} "
            f"replicas, each serving a share of the tasks (route requests by adapter name)"
        )


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.1f} GiB"


def size(adapters: list[ServedAdapter]) -> Sizing:
    """The sizing rules of the module docstring, for the adapters of one base (at least one)."""
    count, largest = len(adapters), max(max(a.bytes for a in adapters), 1)
    per_replica = max(1, CPU_CACHE_BYTES // largest)
    max_loras = min(count, MAX_LORAS)
    return Sizing(
        max_loras=max_loras,
        max_cpu_loras=max(max_loras, min(count, per_replica)),
        max_lora_rank=max_lora_rank(max(a.rank for a in adapters)),
        per_replica=per_replica,
        replicas=math.ceil(count / per_replica),
        inline=count <= INLINE_LIMIT,
    )


def in_production(registry: AdapterRegistry, task: str | None, base: str | None) -> list[VersionRecord]:
    records = production_versions(registry, base=base, task=task)
    if not records:
        raise RegistryError(
            f"no production version{' of ' + task if task else ''}; promote one first "
            f"(loraops promote TASK --version N)"
        )
    return records


def placed(record: VersionRecord, folder: Path, config: PeftConfig, lora_dir: str) -> ServedAdapter:
    """Where the engine host reads the adapter: an S3 copy synced to <lora_dir>/<task>, a local copy where it is;
    `config`: the folder's adapter_config.json."""
    uri = record.promoted["adapter"]
    path, fetch = uri, None
    if is_s3_uri(uri):
        path = f"{lora_dir}/{record.task}"
        fetch = f"aws s3 sync {shlex.quote(uri)} {shlex.quote(path)}"
    size_bytes = (folder / WEIGHTS_FILE).stat().st_size
    return ServedAdapter(
        name=record.task,
        version=record.version,
        uri=uri,
        path=path,
        fetch=fetch,
        rank=config.max_rank,
        bytes=size_bytes,
    )


def by_name(adapter: ServedAdapter, lora_dir: str) -> ServedAdapter:
    """The adapter at <lora_dir>/<name>, where vLLM's filesystem resolver looks for it (a local copy is linked)."""
    path = f"{lora_dir}/{adapter.name}"
    if adapter.path == path:
        return adapter
    link = f"mkdir -p {shlex.quote(lora_dir)} && ln -sfn {shlex.quote(adapter.path)} {shlex.quote(path)}"
    return adapter.model_copy(update={"path": path, "fetch": link})


def plan(registry: AdapterRegistry, engine: str, task: str | None, base: str | None, lora_dir: str) -> list[BaseGroup]:
    """Per base: the adapters in production (each fetched once and checked against the engine's rules), the merged
    models, and the sizing."""
    adapters: dict[str, list[ServedAdapter]] = {}
    merged: dict[str, list[MergedModel]] = {}
    names: dict[str, str] = {}
    for record in in_production(registry, task, base):
        names.setdefault(record.base_fingerprint, record.base_name)
        adapters.setdefault(record.base_fingerprint, [])
        merged.setdefault(record.base_fingerprint, [])
        if "adapter" not in record.promoted:
            merged[record.base_fingerprint].append(
                MergedModel(name=record.task, version=record.version, uri=record.promoted.get("merged"))
            )
            continue
        folder = registry.fetch(record.task, record.version)
        config = read_peft_config(folder)
        registry.check_servable(record, engine, folder, config)
        adapters[record.base_fingerprint].append(placed(record, folder, config, lora_dir))
    groups = []
    for fingerprint, served in adapters.items():
        sizing = size(served) if served else None
        if engine == "vllm" and sizing and not sizing.inline:
            served = [by_name(a, lora_dir) for a in served]
        groups.append(
            BaseGroup(
                base=names[fingerprint],
                fingerprint=fingerprint,
                adapters=served,
                merged=merged[fingerprint],
                sizing=sizing,
            )
        )
    return groups
