"""A running `loraops serve` as promotion and rollback see it, and how they reach it without a restart.

`loraops serve` writes $LORAOPS_HOME/serving/<base fingerprint>.json (LiveEngine: URL, pid, base, its
--max-lora-rank, the version of each task it serves) and removes it when it stops. A promotion or rollback of a
task on that base then swaps the task's adapter in the live engine (vLLM's runtime LoRA loading):

1. load the new version under a staging name `<task>:v<N>` and send it a request: a version the engine refuses
   stops here, and the engine keeps serving the previous one;
2. unload the staging name and load the new version as `<task>` in place (vLLM reads the new weights before it
   drops the old ones; the prefix cache is keyed by the adapter's path, so no answer reuses the old weights);
3. send a request to `<task>`, and only then report success.
"""

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lora_core.peft_format import read_peft_config
from registry import AdapterRegistry
from registry.locks import exclusive

from .errors import EngineFailed, ServeError
from .serve_set import is_causal_lm
from .vllm_api import complete, healthy, load_adapter, unload_adapter

PROBE = "ping"  # the prompt of the request that proves an adapter answers


class LiveEngine(BaseModel):
    model_config = ConfigDict(frozen=True)
    url: str
    pid: int
    base: str
    fingerprint: str
    max_lora_rank: int
    adapters: dict[str, int]  # task -> version the engine serves under the task's name


def record_path(home: Path, fingerprint: str) -> Path:
    return home / "serving" / f"{fingerprint[:16]}.json"


def write_live(home: Path, live: LiveEngine) -> None:
    path = record_path(home, live.fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(live.model_dump_json(indent=2))
    tmp.replace(path)


def remove_live(home: Path, live: LiveEngine) -> None:
    """Forget `live` unless another engine took the base's record meanwhile."""
    found = find_live(home, live.fingerprint)
    if found is not None and found.pid == live.pid:
        record_path(home, live.fingerprint).unlink(missing_ok=True)


def find_live(home: Path, fingerprint: str) -> LiveEngine | None:
    path = record_path(home, fingerprint)
    return LiveEngine.model_validate_json(path.read_text()) if path.exists() else None


def running(live: LiveEngine) -> bool:
    try:
        os.kill(live.pid, 0)
    except ProcessLookupError:
        return False
    return healthy(live.url)


def check_live_rank(registry: AdapterRegistry, task: str, version: str | int) -> bool:
    """Before a promotion uploads anything: refuse (ServeError) an adapter above the --max-lora-rank of the engine
    serving its base. True when such an engine runs and will take the adapter (the promotion then checks vLLM's
    rules too). With no `loraops serve` recorded it asks the registry nothing."""
    if not any((registry.settings.home / "serving").glob("*.json")):
        return False
    record = registry.resolve(task, version)
    live = find_live(registry.settings.home, record.base_fingerprint)
    if live is None or not running(live):
        return False
    config = read_peft_config(registry.fetch(record.task, record.version))
    if config.task_type != "CAUSAL_LM":
        return False
    rank = config.max_rank
    if rank > live.max_lora_rank:
        raise ServeError(
            f"{record.task} v{record.version} has rank {rank}, above the --max-lora-rank {live.max_lora_rank} of the "
            f"engine serving {live.base} at {live.url}; restart `loraops serve` after promoting (it sizes the rank "
            f"from the registry), or retrain with a lower rank"
        )
    return True


def reach_live_engine(registry: AdapterRegistry, task: str) -> str | None:
    """Swap `task`'s production version into the engine serving its base (module docstring); a line saying what
    the engine now serves, None when no `loraops serve` serves that base. EngineFailed when the engine refused it
    (it keeps the version it served)."""
    home = registry.settings.home
    record = registry.resolve(task)
    live = find_live(home, record.base_fingerprint)
    if live is None:
        return None
    if not running(live):
        remove_live(home, live)
        return (
            f"the engine for {live.base} at {live.url} is not running: it did not take {task} v{record.version} "
            f"(the next `loraops serve` serves it)"
        )
    served = live.adapters.get(task)
    if served == record.version:
        return f"the engine at {live.url} already serves {task} v{record.version}"
    folder = registry.fetch(task, record.version)
    if not is_causal_lm(folder):
        return f"{task} is a classifier: the engine at {live.url} does not serve it (mlflow models serve does)"
    if "adapter" not in record.promoted:
        return (
            f"{task} v{record.version} is in production merged: the engine at {live.url} keeps serving "
            f"{task} v{served or '-'}; serve the merged model as a model of its own"
        )
    with exclusive(home / "locks", f"serving:{live.fingerprint}"):
        swap(live, task, record.version, served, str(folder))
        live = find_live(home, record.base_fingerprint) or live
        write_live(home, live.model_copy(update={"adapters": {**live.adapters, task: record.version}}))
    return f"the engine at {live.url} now serves {task} v{record.version} (was v{served or '-'}); it answered"


def swap(live: LiveEngine, task: str, version: int, served: int | None, folder: str) -> None:
    staged = f"{task}:v{version}"
    try:
        load_adapter(live.url, staged, folder)
        complete(live.url, staged, PROBE, max_tokens=1)
    except EngineFailed as e:
        keeps = f"it keeps serving {task} v{served}" if served else f"it does not serve {task}"
        raise EngineFailed(f"the engine at {live.url} did not take {task} v{version}: {e}; {keeps}") from None
    finally:
        unload_adapter(live.url, staged, missing_ok=True)
    # In place: vLLM loads the new weights before it drops the old ones, under the same name and slot.
    load_adapter(live.url, task, folder, in_place=served is not None)
    complete(live.url, task, PROBE, max_tokens=1)
