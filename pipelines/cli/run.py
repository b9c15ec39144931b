"""`loraops run | schedule | predict`: the flow on the embedded default or a team's servers, and predictions."""

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from registry.names import check_task_name
from registry.settings import RegistrySettings

from ..errors import InputError, RunError, SpecError
from ..fanout import DEFAULT_POOL, ask_pool, deployment_name, sync_pool_slots
from ..prefect_server import local_prefect_server, prefect_environment
from ..results import FlowResult, Prediction, PreparedData
from ..spec import TaskSpec
from ..tables import render_table
from ..task_files import check_unique_tasks, expand_task_paths, load_spec

if TYPE_CHECKING:
    from ..follow import Progress


class CheckedTask(NamedTuple):
    path: Path
    spec: TaskSpec
    prepared: PreparedData


@contextlib.contextmanager
def prefect_settings(settings: RegistrySettings) -> Iterator[None]:
    """prefect_defaults for a block that checks input with Prefect's help: bad input takes them back out."""
    added = [name for name in prefect_environment(settings.home) if name not in os.environ]
    prefect_defaults(settings)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # Prefect makes only the last folder
    try:
        yield
    except InputError:
        for name in added:
            os.environ.pop(name, None)
        raise


def prefect_defaults(settings: RegistrySettings) -> None:
    """Before Prefect is imported: its settings for this run (prefect_server.prefect_environment)."""
    for name, value in prefect_environment(settings.home).items():
        os.environ.setdefault(name, value)


def check_tasks(paths: list[str], settings: RegistrySettings) -> list[CheckedTask]:
    """Every task file and its data checked before any flow starts (bad input registers nothing); the data prepared
    here is what the flow trains on."""
    specs = [load_spec(path) for path in paths]
    return [prepare(Path(path).resolve(), spec, settings) for path, spec in zip(paths, specs)]


def prepare(path: Path, spec: TaskSpec, settings: RegistrySettings) -> CheckedTask:
    """The task's base, targets and servers checked (preflight) and its data prepared. Torch, transformers and MLflow
    load here, after the task files parsed (a bad one is refused in a fraction of a second) and while a local Prefect
    server starts (run, schedule, tune)."""
    from .. import steps
    from ..preflight import preflight

    preflight(spec, settings)
    return CheckedTask(path, spec, steps.prepare_data(spec, settings.home / "work" / spec.task))


def run(paths: list[str], print_=print, local: bool = False) -> "list[FlowResult] | list[Progress]":
    """The tasks of `paths` (task files, or folders of them). With a Prefect server (PREFECT_API_URL) and not
    `local`: one flow run each on the work pool (run_on_pool). Else each task's flow in this process, one after
    another; a failed task does not stop the others, and the run fails naming it."""
    settings = RegistrySettings.from_env()
    specs = [load_spec(path) for path in expand_task_paths(paths)]  # a task file that does not parse starts nothing
    check_unique_tasks(specs)
    if os.environ.get("PREFECT_API_URL") and not local:
        from .pool_run import run_on_pool

        return run_on_pool(specs, settings, print_)
    results, failed = [], []
    with local_prefect_server(settings.home) as prefect_ready:
        tasks = [prepare(Path(str(spec.source)), spec, settings) for spec in specs]  # while it starts
        prefect_defaults(settings)  # only now: bad input leaves this process's environment as it was
        prefect_ready()
        from ..flows import train_adapter

        for task in tasks:
            try:
                results.append(report(train_adapter(str(task.path), prepared=task.prepared), task.spec, print_))
            except RunError as e:
                if len(tasks) == 1:
                    raise
                print(f"loraops: error: {e}", file=sys.stderr)
                failed.append(task.spec.task)
    if failed:
        raise RunError(f"{len(failed)} of {len(tasks)} tasks failed: {', '.join(failed)}; see the lines above")
    return results


def report(result: FlowResult, spec: TaskSpec, print_=print) -> FlowResult:
    e, t, metric = result.evaluation, result.trained, spec.gate.metric
    chosen = (
        f" (kept step {t.best_step} by validation{', stopped early' if t.stopped_early else ''})"
        if t.best_validation
        else ""
    )
    if t.averaged_steps:
        chosen = f" (kept the mean of the passes at steps {', '.join(map(str, t.averaged_steps))})"
    print_(
        f"{result.task}: v{result.version} trained {t.steps} steps in {t.seconds:.0f}s{chosen}; "
        f"{metric} base {e.base[metric]:.3f} -> adapter {e.adapter[metric]:.3f} "
        f"(merged {e.merged[metric]:.3f}, gap {e.merge_gap:.1e}); "
        f"rank for 95% of |dW|^2: {result.analysis.recommended_rank.p95} of r={result.analysis.r}"
    )
    if result.promotion:
        print_(f"{result.task}: promoted v{result.version} ({result.promotion.mode}) to {result.promotion.uri}")
    else:
        print_(f"{result.task}: not promoted (promotion.auto is false)")
    return result


def schedule(path: str, cron: str, apply_only: bool = False, print_=print) -> str:
    """A deployment of train_adapter for this task on `cron`, at most one run at a time.

    With a Prefect server (PREFECT_API_URL) it goes to the work pool $LORAOPS_WORK_POOL (default loraops-cpu),
    whose workers run it, and this returns. Without one, this process serves it (until Ctrl-C) on a local server
    that stops with it, however it stops (Prefect's own temporary server outlived a kill -9, with parent 1)."""
    settings = RegistrySettings.from_env()
    pool = os.environ.get("LORAOPS_WORK_POOL", DEFAULT_POOL) if os.environ.get("PREFECT_API_URL") else None
    with local_prefect_server(settings.home) as prefect_ready:  # sets PREFECT_API_URL to its own once ready
        spec = check_tasks([path], settings)[0].spec  # while the server starts
        prefect_defaults(settings)
        prefect_ready()
        return deploy(spec, path, cron, pool, apply_only, print_)


def deploy(spec: TaskSpec, path: str, cron: str, pool: str | None, apply_only: bool, print_=print) -> str:
    """The deployment on `pool`'s server, or (pool None) served from this process unless `apply_only`."""
    check_cron(cron)
    if pool:
        check_pool(pool)
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    from ..flows import train_adapter

    # A module entrypoint: the runner imports pipelines.flows as a package module (its imports are relative).
    deployment = train_adapter.to_deployment(
        name=spec.task,
        cron=cron,
        parameters={"spec_path": str(Path(path).resolve())},
        concurrency_limit=1,
        tags=["loraops", spec.task],
        work_pool_name=pool,
        entrypoint_type=EntrypointType.MODULE_PATH,
        description=f"train, evaluate and ship the {spec.task} adapter",
    )
    assert isinstance(deployment, RunnerDeployment)  # called from sync code: the deployment, not a coroutine
    deployment_id = str(deployment.apply())
    where = f"work pool {pool}: its workers run it" if pool else "concurrency limit 1"
    print_(f"deployment train_adapter/{spec.task} ({deployment_id}) on cron {cron!r}, one run at a time, {where}")
    if not pool and not apply_only:
        from prefect import serve

        print_("serving it from this process; stop with Ctrl-C (with PREFECT_API_URL set, a worker runs it instead)")
        serve(deployment)
    return deployment_id


def check_cron(cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise SpecError(
            f"--cron {cron!r} is not a cron expression; use five fields, e.g. '0 3 * * *' (03:00 daily)"
        ) from None


def check_pool(pool: str) -> None:
    """The work pool exists on the Prefect server (which answers); its slots (fanout.pool_slots) sized to its limit."""
    ask_pool(pool, lambda client: sync_pool_slots(client, client.read_work_pool(pool)))


def schedules(print_=print) -> list[dict]:
    """`loraops schedule --list`: the train_adapter deployments, their cron, pool and last run."""
    with prefect_api(RegistrySettings.from_env()):
        return list_schedules(print_)


def list_schedules(print_=print) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    rows = []
    with get_client(sync_client=True) as client:
        for d in client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["train_adapter"]))):
            if d.name.startswith(deployment_name("")):  # `loraops run`'s deployment of a pool: no schedule
                continue
            runs = [
                r
                for r in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])),
                    limit=5,
                    sort=FlowRunSort.START_TIME_DESC,
                )
                if r.start_time
            ]  # not the next one
            rows.append(
                {
                    "task": d.name,
                    "cron": ", ".join(s.schedule.cron for s in d.schedules if hasattr(s.schedule, "cron")) or "-",
                    "pool": d.work_pool_name or "(served)",
                    "last run": f"{runs[0].name} {runs[0].state_name}" if runs else "-",
                }
            )
    print_(
        render_table([("task", "cron", "pool", "last run")] + [tuple(r.values()) for r in rows])
        if rows
        else "no scheduled tasks"
    )
    return rows


def unschedule(task: str, print_=print) -> None:
    """`loraops schedule --remove TASK`: delete the task's deployment (runs already made stay in the history)."""
    check_task_name(task)
    with prefect_api(RegistrySettings.from_env()):
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                deployment = client.read_deployment_by_name(f"train_adapter/{task}")
            except ObjectNotFound:
                raise SpecError(f"no schedule for task {task!r}; see loraops schedule --list") from None
            client.delete_deployment(deployment.id)
    print_(f"schedule of {task} removed")


@contextlib.contextmanager
def prefect_api(settings: RegistrySettings) -> Iterator[None]:
    """PREFECT_API_URL for the block: the user's server, else a local one that stops with this process."""
    with local_prefect_server(settings.home) as prefect_ready:
        prefect_defaults(settings)
        prefect_ready()
        yield


def predict(ref: str, texts: list[str], print_=print) -> list[Prediction]:
    from ..serving import AdapterSwitcher

    results = AdapterSwitcher().predict(ref, texts)
    for r in results:
        answer = (
            r.completion if r.completion is not None else f"{r.label}  (p={r.probability:.2f}, {r.task} v{r.version})"
        )
        print_(f"{r.text!r} -> {answer}")
    return results
