"""The registry at fleet size: N tasks x 3 versions on an mlflow server on PostgreSQL, registered through
AdapterRegistry.register (one tiny adapter's bytes, a dataset fingerprint per version so none is a re-registration).

Rows: `adapters list` (AdapterRegistry.list_versions) against the least a raw MlflowClient needs for the same
answer (registered models and model versions, each paged by hand); resolve at N tasks against resolve at 1 task
on the same server; and what registering costs per version.
"""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from bench.harness import interleaved
from bench.models import adapter_for, llama_on_disk
from bench.servers import mlflow_server, postgres, postgres_bin

VERSIONS = 3
WRITERS = 2  # registering processes at once (the server and PostgreSQL share the same two cores)


def register_tasks(url: str, home: Path, base: Path, adapter: Path, first: int, stop: int) -> None:
    """Tasks first..stop-1, VERSIONS versions each, through AdapterRegistry.register (one process's share)."""
    from registry import AdapterRegistry, RegistrySettings

    settings = RegistrySettings.from_env(home=home, tracking_uri=url, promotion_target=str(home / "p"), actor="bench")
    registry = AdapterRegistry(settings)
    record = registry.register_base(base, name="bench/fleet-base")
    for task in range(first, stop):
        for version in range(VERSIONS):
            dataset = hashlib.sha256(f"{task}/{version}".encode()).hexdigest()
            registry.register(
                f"fleet-{task:04d}", adapter, record, dataset, {"accuracy": 0.5}, loader_module="pipelines.pyfunc"
            )


def register_fleet(url: str, home: Path, base: Path, adapter: Path, first: int, stop: int) -> None:
    """register_tasks over WRITERS processes, each with its own registry home (digest cache, artifact cache)."""
    bounds = [first + (stop - first) * i // WRITERS for i in range(WRITERS + 1)]
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.fleet", url, str(home / f"w{i}"), str(base), str(adapter), str(a), str(b)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, (a, b) in enumerate(zip(bounds, bounds[1:]))
    ]
    for writer in writers:
        _, err = writer.communicate()
        if writer.returncode:
            raise RuntimeError(f"registering the fleet failed: {err[-2000:]}")


def raw_listing(client: MlflowClient) -> int:
    """Every task's versions with their aliases, as a user without loraops pages MLflow by hand."""
    aliases: dict[str, dict[str, int]] = {}
    token = None
    while True:
        page = client.search_registered_models("tags.`loraops.kind` = 'task'", max_results=1000, page_token=token)
        aliases |= {m.name: dict(m.aliases) for m in page}
        if not (token := page.token):
            break
    count = 0
    while True:
        versions = client.search_model_versions("", max_results=10_000, page_token=token)
        count += sum(1 for v in versions if v.name in aliases)
        if not (token := versions.token):
            return count


def registry_fleet(quick: bool, home: Path) -> list[dict]:
    from bench.cases import row
    from registry import AdapterRegistry, RegistrySettings

    tasks = 8 if quick else int(os.environ.get("BENCH_FLEET_TASKS", "1000"))
    if postgres_bin() is None:
        raise RuntimeError("the fleet case runs MLflow on PostgreSQL; apt-get install postgresql")
    base = llama_on_disk("tiny", home / "fleet-base")
    adapter = adapter_for(base, home / "fleet-adapter", r=4)
    with (
        postgres() as backend,
        mlflow_server(home / "fleet", backend) as url,
        postgres() as lone_backend,
        mlflow_server(home / "lone", lone_backend) as lone_url,
    ):
        # Two registries alike but for their size, measured side by side once both servers are warm: one task on
        # one, N tasks on the other (a resolve timed on a fresh server first, alone, pays its warm-up instead).
        lone = AdapterRegistry(RegistrySettings.from_env(home=home / "lone-home", tracking_uri=lone_url, actor="b"))
        register_tasks(lone_url, home / "lone-home", base, adapter, 0, 1)
        registry = AdapterRegistry(RegistrySettings.from_env(home=home / "fleet-home", tracking_uri=url, actor="b"))
        started = time.perf_counter()
        register_fleet(url, home / "fleet-writers", base, adapter, 0, tasks)
        per_version = (time.perf_counter() - started) / (tasks * VERSIONS)
        resolve = interleaved(
            {
                "ours": lambda: registry.resolve(f"fleet-{tasks // 2:04d}", "candidate"),
                "at one": lambda: lone.resolve("fleet-0000", "candidate"),
            },
            repeats=10 if quick else 50,
        )
        assert len(registry.list_versions()) == tasks * VERSIONS  # every task and version, past every page
        client = MlflowClient(url)
        listing = interleaved(
            {"ours": lambda: registry.list_versions(), "anchor": lambda: raw_listing(client)}, repeats=3 if quick else 5
        )
    size = f"{tasks} tasks x {VERSIONS} versions, mlflow server on PostgreSQL"
    return [
        row(
            f"adapters list, {size} (s)",
            listing["ours"],
            listing["anchor"],
            "s",
            "<= 2x raw paged search",
            "list_versions (typed records, aliases) vs MlflowClient paging models and versions by hand",
        ),
        row(
            f"resolve task@candidate at {tasks} tasks vs at 1 task (s)",
            resolve["ours"],
            resolve["at one"],
            "s",
            "<= 1.2x",
            "two mlflow servers on PostgreSQL alike but for their size, both warm, resolves interleaved",
        ),
        row(
            "register one adapter version on the mlflow server (s)",
            per_version,
            None,
            "s",
            "report",
            f"AdapterRegistry.register, {tasks * VERSIONS} versions in {WRITERS} processes (wall time per "
            f"version): MLflow Model with its code, manifests, tags, alias",
        ),
    ]


if __name__ == "__main__":
    url, home, base, adapter, first, stop = sys.argv[1:]
    register_tasks(url, Path(home), Path(base), Path(adapter), int(first), int(stop))
