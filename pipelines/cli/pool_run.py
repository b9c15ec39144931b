"""`loraops run` with a Prefect server: every task checked here, then one flow run each on the work pool, followed
until all end (`loraops tune` follows its run the same way). Loaded only for a run on the pool: it brings in
MLflow and the follower's table."""

import os
import sys
import time
from pathlib import Path

from registry import AdapterRegistry
from registry.run_watch import RunWatch
from registry.settings import RegistrySettings

from ..errors import RunError
from ..fanout import DEFAULT_POOL, Submitted, cancel, check_pool_tasks, submit
from ..follow import Follower, Progress, follow, max_overlap
from ..spec import TaskSpec
from .run import prefect_settings, prepare
from .watch import ChangeLines, LiveTable

CLOCK_SLACK_MS = 60_000  # a worker's clock may lag this one: its MLflow run counts if it started up to this early


def run_on_pool(specs: list[TaskSpec], settings: RegistrySettings, print_=print) -> list[Progress]:
    """Every task checked first (the pool ready, every file where its workers can read it, the data and base as
    for a local run), then one flow run per task on $LORAOPS_WORK_POOL, followed until all end: a live table on a
    terminal, a line per change elsewhere. Ctrl-C cancels the runs not finished. Raises RunError naming the tasks
    that did not complete."""
    pool = os.environ.get("LORAOPS_WORK_POOL", DEFAULT_POOL)
    with prefect_settings(settings):
        limit = check_pool_tasks(pool, specs).pool.concurrency_limit
        for spec in specs:
            prepare(Path(str(spec.source)), spec, settings)
    since_ms = int(time.time() * 1000) - CLOCK_SLACK_MS
    submitted = submit(pool, specs)
    at_once = f"at most {limit} at once" if limit else "no concurrency limit"
    print_(f"submitted {len(submitted)} flow run(s) to work pool {pool} ({at_once}); following them")
    return follow_on_pool(submitted, specs, settings, pool, since_ms, print_)


def follow_on_pool(
    submitted: list[Submitted],
    specs: list[TaskSpec],
    settings: RegistrySettings,
    pool: str,
    since_ms: int,
    print_=print,
) -> list[Progress]:
    """The submitted flow runs followed until all end (pool_report); Ctrl-C cancels those not finished."""
    watch = RunWatch(AdapterRegistry(settings).runs, [s.task for s in specs], since_ms)
    follower = Follower(submitted, {s.task: s.gate.metric for s in specs}, watch)
    started = time.monotonic()
    try:
        with LiveTable() if sys.stdout.isatty() else ChangeLines(print_) as show:
            rows = follow(follower, show)
    except KeyboardInterrupt:
        cancel([row.flow_run_id for row in follower.rows.values() if not row.final])
        raise
    return pool_report(rows, pool, time.monotonic() - started, print_)


def pool_report(rows: list[Progress], pool: str, seconds: float, print_=print) -> list[Progress]:
    for row in rows:
        where = f"flow run {row.flow_run}" + (f", MLflow run {row.mlflow_run}" if row.mlflow_run else "")
        outcome = row.metric if row.completed else row.reason()
        print_(f"{row.task}: {row.state}: {outcome} ({where})")
    spans = [(r.started, r.ended) for r in rows if r.started and r.ended]
    failed = [r for r in rows if not r.completed]
    print_(
        f"{len(rows) - len(failed)} of {len(rows)} task(s) completed on work pool {pool} in {seconds:.0f}s, "
        f"at most {max_overlap(spans)} at once"
    )
    if len(rows) == 1 and failed:
        raise RunError(f"{failed[0].task}: {failed[0].state}: {failed[0].reason()}")
    if failed:
        names = ", ".join(f"{r.task} ({r.state})" for r in failed)
        raise RunError(
            f"{len(failed)} of {len(rows)} tasks did not complete on pool {pool}: {names}; see the lines above"
        )
    return rows
