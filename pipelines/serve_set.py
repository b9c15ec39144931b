"""What `loraops serve` puts in one engine: a base and every production causal-LM adapter on it, each fetched to the
verified local cache and checked against the base's weights and the engine's rules, with the engine's LoRA sizing.

Classifier adapters (their head is a saved module) and merged promotions are not adapters vLLM loads next to a
base: they are listed apart with one line each saying how they are served.
"""

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lora_core.peft_format import PeftConfig, read_peft_config
from registry import AdapterRegistry, VersionRecord
from registry.engines import VLLM_MAX_LORA_RANKS, max_lora_rank

from .errors import ServeError
from .production import production_versions
from .serve_plan import ServedAdapter, Sizing, placed, size

ENGINE = "vllm"


class LocalAdapter(BaseModel):
    """A production adapter and its verified local copy (the folder the engine reads)."""

    model_config = ConfigDict(frozen=True)
    adapter: ServedAdapter
    folder: Path


class ServeSet(BaseModel):
    model_config = ConfigDict(frozen=True)
    base: str
    fingerprint: str
    base_path: Path
    adapters: list[LocalAdapter]
    sizing: Sizing
    not_served: list[str]  # one line per production version the engine does not take, saying where it goes


def production_on_base(registry: AdapterRegistry, base: str | None) -> list[VersionRecord]:
    """Production versions of one base (ServeError naming the bases there are when that is not one)."""
    records = production_versions(registry, base=base)
    if not records and base is not None:
        everywhere = sorted({r.base_name for r in production_versions(registry)})
        known = registry.list_versions(base=base)
        if known:
            raise ServeError(
                f"no adapter on base {base} is in production; promote one first (loraops promote TASK --version N)"
            )
        raise ServeError(
            f"base {base!r} is not registered (no adapter was trained on it); serve one of the bases in production "
            f"({', '.join(everywhere) or 'none'}) with --base"
        )
    if not records:
        raise ServeError("no adapter is in production; promote one first (loraops promote TASK --version N)")
    bases = sorted({r.base_name for r in records})
    if len(bases) > 1:
        raise ServeError(f"{len(bases)} bases have adapters in production ({', '.join(bases)}); pick one with --base")
    return records


def local_adapter(
    registry: AdapterRegistry, record: VersionRecord, base_path: Path, folder: Path, config: PeftConfig
) -> LocalAdapter:
    """The adapter's verified local copy `folder` (registry.fetch: from the promotion store; `config` its
    adapter_config.json), checked against the base's weights and vLLM's loading rules."""
    registry.check_base(record, base_path)
    registry.check_servable(record, ENGINE, folder, config)
    return LocalAdapter(adapter=placed(record, folder, config, str(folder.parent)), folder=folder)


def is_causal_lm(folder: Path) -> bool:
    return read_peft_config(folder).task_type == "CAUSAL_LM"


def serve_set(registry: AdapterRegistry, base: str | None, max_rank: int | None = None) -> ServeSet:
    """Every production adapter vLLM can serve on `base` (the one base in production when None), ready to start.

    max_rank: the engine's --max-lora-rank when the user sets it; an adapter above it is refused (ServeError)."""
    from .models import locate_base

    if max_rank is not None and max_rank not in VLLM_MAX_LORA_RANKS:
        raise ServeError(f"--max-lora-rank {max_rank} is not one vLLM takes; use one of {VLLM_MAX_LORA_RANKS}")
    records = production_on_base(registry, base)
    found = registry.find_base(records[0].base_fingerprint)
    if found is None:
        raise ServeError(
            f"base {records[0].base_name} ({records[0].base_fingerprint[:12]}) is not registered; register it "
            f"again by running a task on it"
        )
    base_path = locate_base(found.name, found.source)
    adapters, not_served = [], []
    for record in records:
        if "adapter" not in record.promoted:
            not_served.append(
                f"{record.task} v{record.version} is in production merged ({record.promoted.get('merged')}): "
                f"serve it as a model of its own"
            )
            continue
        folder = registry.fetch(record.task, record.version)
        config = read_peft_config(folder)
        if config.task_type != "CAUSAL_LM":
            not_served.append(
                f"{record.task} v{record.version} is a classifier: serve it with "
                f"`mlflow models serve -m models:/{record.task}@production` (vLLM generates text)"
            )
            continue
        adapters.append(local_adapter(registry, record, base_path, folder, config))
    if not adapters:
        raise ServeError(
            f"base {found.name} has no causal-LM adapter in production for vLLM to serve ({'; '.join(not_served)})"
        )
    sizing = size([a.adapter for a in adapters])
    if max_rank is not None:
        over = [a.adapter for a in adapters if a.adapter.rank > max_rank]
        if over:
            raise ServeError(
                f"{over[0].name} v{over[0].version} has rank {over[0].rank}, above --max-lora-rank {max_rank}; "
                f"drop --max-lora-rank (it is sized from the adapters) or set it to {max_lora_rank(over[0].rank)}"
            )
        sizing = sizing.model_copy(update={"max_lora_rank": max_rank})
    return ServeSet(
        base=found.name,
        fingerprint=found.fingerprint,
        base_path=base_path,
        adapters=adapters,
        sizing=sizing,
        not_served=not_served,
    )
