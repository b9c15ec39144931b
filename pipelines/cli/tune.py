"""`loraops tune TASK.yaml [--trials N] [--timeout S] [--local]`: a search (training.search, or its defaults), then
the best trial's adapter through the gate, merge check, analysis, registration and promotion of `loraops run`.

With a Prefect server (PREFECT_API_URL) and not --local, the trials fan out over the work pool $LORAOPS_WORK_POOL
(pool_search.py) and the best trial ships in a flow run there; else all of it runs here, one trial after another."""

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from registry import RegistrySettings

from ..errors import SpecError
from ..fanout import DEFAULT_POOL, WorkerView, check_pool_tasks, submit
from ..prefect_server import local_prefect_server
from ..results import FlowResult, SearchSummary
from ..spec import SearchSpec, TaskSpec
from ..study import StudyPlan, check_study, plan_study
from ..task_files import load_spec, searched
from .run import prefect_defaults, prefect_settings, prepare, report

if TYPE_CHECKING:
    from ..follow import Progress


def with_search(spec: TaskSpec, trials: int | None, timeout: float | None) -> TaskSpec:
    """The task with its training.search (or the default space) and the command line's budget (task_files.searched)."""
    search = (spec.training.search or SearchSpec()).model_dump()
    search |= {k: v for k, v in (("trials", trials), ("timeout", timeout)) if v is not None}
    return searched(spec, search, f"{spec.source} with --trials/--timeout")


def tune(
    path: str, trials: int | None, timeout: float | None, local: bool = False, print_=print
) -> "FlowResult | list[Progress]":
    """Every check before the first trial: the task file with the budget, the data, the base, and the study (another
    task's name, other data or another space); then the flow with the search, here or on the pool."""
    settings = RegistrySettings.from_env()
    spec = with_search(load_spec(path), trials, timeout)
    search = spec.training.search
    assert search is not None
    if os.environ.get("PREFECT_API_URL") and not local:
        return tune_on_pool(spec, search, settings, print_)
    with local_prefect_server(settings.home) as prefect_ready:
        task = prepare(Path(path).resolve(), spec, settings)
        check_study(plan_study(spec, search, task.prepared, settings))
        prefect_defaults(settings)
        prefect_ready()
        from ..flows import train_adapter

        result = train_adapter(str(task.path), prepared=task.prepared, search=search)
    assert result.search is not None
    print_(summary_line(spec.task, result.search))
    return report(result, spec, print_)


def summary_line(task: str, found: SearchSummary) -> str:
    params = ", ".join(f"{k}={v:.3g}" for k, v in found.best_params.items())
    return (
        f"{task}: study {found.study} ({found.storage}): {found.ran} trial(s) run now, {found.trials} in all "
        f"({found.complete} complete, {found.pruned} pruned); best trial {found.best_trial}: validation "
        f"{found.metric} {found.best_value:.4f} with {params}"
    )


def tune_on_pool(spec: TaskSpec, search: SearchSpec, settings: RegistrySettings, print_=print) -> "list[Progress]":
    """The checks of a pool run (the pool ready, every file where its workers read it) and the study's storage
    reachable by the workers; then the trials on the pool (pool_search.py) in children of the task's MLflow run,
    started here, and the flow run that ships the best trial, followed until it ends."""
    from registry import AdapterRegistry

    from .. import tracking
    from ..models import register_task_base
    from ..pool_search import end_parent, pool_room, search_on_pool
    from ..search import noise_line
    from .pool_run import CLOCK_SLACK_MS, follow_on_pool

    pool_name = os.environ.get("LORAOPS_WORK_POOL", DEFAULT_POOL)
    with prefect_settings(settings):
        pool, view = check_pool_tasks(pool_name, [spec])
        task = prepare(Path(str(spec.source)), spec, settings)
        plan = plan_study(spec, search, task.prepared, settings)
        check_study(plan)
        check_storage_reachable(plan, view)
    pinned = search.model_copy(update={"study": plan.name, "storage": worker_storage(plan.storage)})
    registry = AdapterRegistry(settings)
    base = register_task_base(registry, spec.base)[1]
    since_ms = int(time.time() * 1000) - CLOCK_SLACK_MS
    run_id = tracking.start_run(registry, spec, task.prepared, base)
    room = pool_room(pool)
    if line := noise_line(spec.task, plan, task.prepared.validation):
        print_(line)
    print_(f"{spec.task}: study {plan.name}: trials on work pool {pool_name}, {room} at once (MLflow run {run_id})")
    try:
        print_(summary_line(spec.task, search_on_pool(spec, pinned, plan, pool_name, room, run_id, print_)))
        submitted = submit(pool_name, [spec], pinned, run_id)
    except BaseException as e:
        end_parent(registry.runs, run_id, e)
        raise
    print_(f"{spec.task}: shipping the best trial in flow run {submitted[0].flow_run_id} on work pool {pool_name}")
    try:
        return follow_on_pool(submitted, [spec], settings, pool_name, since_ms, print_)
    except BaseException as e:  # a ship run that failed before its own steps leaves the task's run to end here
        if registry.runs.status(run_id) == "RUNNING":
            end_parent(registry.runs, run_id, e, "ship")
        raise


def worker_storage(url: str) -> str | None:
    """The storage the trials are told to use: this one, unless its URL holds a password (flow run parameters are
    shown in Prefect's UI): then the workers' own (their $LORAOPS_STUDY_STORAGE, as the stack sets it)."""
    from sqlalchemy.engine import make_url

    return None if make_url(url).password else url


def check_storage_reachable(plan: StudyPlan, view: WorkerView) -> None:
    """A study in SQLite is a file: the pool's workers must see it (`view`: fanout.worker_view), else one line."""
    if not plan.storage.startswith("sqlite:///"):
        return
    path = plan.storage.removeprefix("sqlite:///")
    if not view.sees(path):
        raise SpecError(
            f"the study storage {plan.storage} is on this machine only and pool {view.pool!r} cannot read it "
            f"({view.describe()}); set LORAOPS_STUDY_STORAGE to a database the workers reach (the stack's "
            f"PostgreSQL), or tune here with --local"
        )
