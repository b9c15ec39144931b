"""The Prefect flow `train_adapter`: prepare_data → train → evaluate → rank → merge → analyze → register → promote.

Each step is a Prefect task (tasks.py) over a plain function (steps.py, ranking.py, analysis.py) that takes and returns typed
values (results.py). The learning steps are cached by cache keys over their inputs (an unchanged re-run is served
from cache) with JSON results (no pickle). One registry serves the whole flow; its MLflow run ends FINISHED,
FAILED with the reason, or KILLED (lifecycle.py).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from prefect import flow
from pydantic import BaseModel, ConfigDict

from registry import AdapterRegistry, BaseRecord, RegistrySettings
from registry.faults import network_defaults

from . import steps, tasks, tracking
from .analysis import spectrum_tags
from .errors import GateBlocked, InputError
from .fanout import pool_slots
from .lifecycle import RunLifecycle
from .models import register_task_base
from .preflight import preflight
from .results import FlowResult, PreparedData, ProductionVersion, SearchSummary, TrainedAdapter, TrialOutcome
from .search import refit_spec, run_asked_trial, run_search, search_tags, trial_task
from .spec import SearchSpec, TaskSpec
from .study import check_study, plan_study
from .task_files import load_spec, searched
from .tasks import (
    analyze_task,
    data_artifact,
    evaluate_task,
    merge_task,
    prepare_data_task,
    promote_task,
    rank_task,
    register_task,
    source_key,
    train_task,
    unless_gone,
)
from .threads import Threads, use_threads
from .trial import TrialGround


def production_for(registry: AdapterRegistry, task_name: str, base_fingerprint: str) -> ProductionVersion | None:
    """The current production version to compare with: its adapter if on the same base, else its recorded metrics."""
    from registry.errors import RegistryError

    try:
        record = registry.resolve(task_name, "production")
    except RegistryError:
        return None
    metrics = {k.removeprefix("adapter_"): v for k, v in record.metrics.items() if k.startswith("adapter_")}
    same_base = record.base_fingerprint == base_fingerprint
    return ProductionVersion(
        version=record.version,
        metrics=metrics,
        adapter=str(registry.fetch(task_name, record.version)) if same_base else None,
    )


def run_name() -> str:
    """`<task>-<UTC time>` while it runs (renamed `<task>-v<N>` once registered): the Prefect UI reads like a log."""
    from prefect.runtime import flow_run

    path = Path(flow_run.parameters["spec_path"])
    try:
        name = load_spec(path).task  # parsed once per process: the flow's own load_spec returns the same object
    except InputError:  # the flow names it in its own line
        name = path.stem
    return f"{name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def name_run(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=name)


@contextmanager
def pool_slot() -> Iterator[None]:
    """On a work pool: one slot of its global concurrency limit (fanout.pool_slots) for the whole run, taken
    atomically, so no more runs work at once than the pool's limit. Elsewhere, or with no such limit: nothing."""
    from prefect.concurrency.sync import concurrency
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    pool = context.flow_run.work_pool_name if context and context.flow_run else None
    if pool is None:
        yield
        return
    with concurrency(pool_slots(pool), occupy=1, strict=False):
        yield


class Ground(NamedTuple):
    """What a flow run of a task sets up before its work: the task, its registry, data and base."""

    spec: TaskSpec
    settings: RegistrySettings
    registry: AdapterRegistry
    prepared: PreparedData
    base_path: Path
    base: BaseRecord
    work: Path
    threads: Threads

    def key(self, *parts: object) -> str:
        """A cache key of this home (cache entries name files in it)."""
        return steps.cache_key(str(self.work), *parts)

    def for_trials(self, parent_run_id: str) -> TrialGround:
        """What a search's trials share, their runs children of `parent_run_id`."""
        base_path, work = str(self.base_path), str(self.work)
        return TrialGround(self.prepared, base_path, self.base.fingerprint, work, self.registry, parent_run_id)


def set_up(spec_path: str, prepared: PreparedData | None, search: SearchSpec | None = None) -> Ground:
    """The task file read (with `search`, as that search trains it: task_files.searched), this run's threads sized, the
    data prepared (unless `loraops run` checked and prepared it already: a worker's run checks it here) and the base
    registered."""
    network_defaults()
    spec = load_spec(spec_path)
    if search is not None:
        spec = searched(spec, search, f"{spec_path} with its search")
    threads = use_threads(spec.training.threads)  # before any step: the run's share of the CPUs, not all of them
    print(f"{spec.task}: {threads.threads} thread(s): {threads.reason}")
    settings = RegistrySettings.from_env()
    if prepared is None:
        preflight(spec, settings)
    registry = AdapterRegistry(settings)
    work = settings.home / "work" / spec.task
    if prepared is None:
        key = steps.cache_key(str(work), source_key(spec, registry))
        prepared = unless_gone(prepare_data_task, lambda p: p.folder, spec, str(work), key=key)
    else:
        data_artifact(spec, prepared)
    base_path, base = register_task_base(registry, spec.base)
    return Ground(spec, settings, registry, prepared, base_path, base, work, threads)


class FlowParameters(BaseModel):
    """A flow run's parameters as a caller submits them to a deployment (JSON; Prefect validates them against the
    flow's signature on the worker): typed here so that a misspelt or missing one fails where it is built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def sent(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class TrainParameters(FlowParameters):
    """train_adapter's (a pool run prepares its own data: no `prepared`)."""

    spec_path: str
    search: SearchSpec | None = None
    run_id: str | None = None


class TrialParameters(FlowParameters):
    """search_trial's."""

    spec_path: str
    search: SearchSpec
    trial: int
    parent_run_id: str


@flow(name="train_adapter", flow_run_name=run_name, log_prints=True)
def train_adapter(
    spec_path: str,
    prepared: PreparedData | None = None,
    search: SearchSpec | None = None,
    run_id: str | None = None,
) -> FlowResult:
    """One task, end to end. `prepared`: the data as `loraops run` already checked and prepared it (a worker's run
    prepares it here). `search` (default training.search): tune first (search.py), then ship the best trial.
    `run_id`: the task's MLflow run, started by the caller (`loraops tune` on a pool, whose trials are its
    children), else one is started here. Raises GateBlocked when the gate blocks (the version stays a candidate)."""
    with pool_slot():
        return run_task(spec_path, prepared, search, run_id)


def run_task(
    spec_path: str, prepared: PreparedData | None, search: SearchSpec | None, run_id: str | None
) -> FlowResult:
    """train_adapter's body, inside its pool slot."""
    ground = set_up(spec_path, prepared, search)
    spec, registry, base = ground.spec, ground.registry, ground.base
    if spec.promotion.auto:
        registry.check_drift(spec.task)  # an alias moved outside loraops stops the run before training
    search = search or spec.training.search
    plan = plan_study(spec, search, ground.prepared, ground.settings) if search else None
    if plan:
        check_study(plan)  # another task's study, other data or another space: bad input, before the run starts
    if run_id is None:
        run_id = tracking.start_run(registry, spec, ground.prepared, base)
    tracking.log_threads(registry.runs, run_id, ground.threads)
    with RunLifecycle(registry.runs, spec.task, run_id) as run:
        if search is None or plan is None:
            return run_steps(ground, spec, run)
        run.at("search")
        found = run_search(spec, search, plan, ground.for_trials(run_id), trial_task)
        registry.runs.log_params(run_id, {f"search.best.{k}": f"{v:g}" for k, v in found.summary.best_params.items()})
        refit = refit_spec(found.spec, search)
        if refit is None:
            return run_steps(ground, found.spec, run, found.trained, found.summary)
        run.at("prepare")  # the same files, the validation split folded back into training
        key = ground.key(source_key(refit, registry))
        prepared = unless_gone(prepare_data_task, lambda p: p.folder, refit, str(ground.work), key=key)
        registry.runs.set_tags(run_id, {"loraops.dataset.fingerprint": prepared.digest})  # the data it ships from
        tracking.log_data(registry.runs, run_id, spec.task, prepared)
        print(f"{spec.task}: refit: the best trial's settings on all {prepared.train} training examples")
        summary = found.summary.model_copy(update={"refit": True})
        return run_steps(ground._replace(prepared=prepared), refit, run, None, summary)


def trial_run_name() -> str:
    """`<task>-trial-<N>`."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    try:
        name = load_spec(Path(parameters["spec_path"])).task
    except InputError:
        name = Path(parameters["spec_path"]).stem
    return f"{name}-trial-{parameters['trial']}"


@flow(name="search_trial", flow_run_name=trial_run_name, log_prints=True)
def search_trial(spec_path: str, search: SearchSpec, trial: int, parent_run_id: str) -> TrialOutcome:
    """One trial of a search that `loraops tune` drives over the pool (pool_search.py): trial number `trial` of
    the study that `search` names (asked for there), trained here in a child MLflow run of `parent_run_id`, its
    outcome told to the study."""
    with pool_slot():
        ground = set_up(spec_path, None, search)
        spec = ground.spec
        plan = plan_study(spec, search, ground.prepared, ground.settings)
        return run_asked_trial(spec, search, plan, trial, ground.for_trials(parent_run_id))


def run_steps(
    ground: Ground,
    spec: TaskSpec,
    run: RunLifecycle,
    trained: TrainedAdapter | None = None,
    search: SearchSummary | None = None,
) -> FlowResult:
    """The steps after the MLflow run started; `run.at` names the one running, for the failure's line. `spec`: the
    task as it trains (a search's best trial's settings); `trained`: the adapter that trial trained already
    (`search` says which), else this trains it."""
    registry, prepared, base, base_path, work, key = (
        ground.registry,
        ground.prepared,
        ground.base,
        ground.base_path,
        ground.work,
        ground.key,
    )
    run_id = run.run_id
    train_key = tasks.train_key(spec, prepared, base.fingerprint)
    folder = work / train_key[:16]
    run.at("train")
    if trained is None:
        trained = unless_gone(
            train_task,
            lambda t: t.adapter,
            spec,
            prepared,
            str(base_path),
            str(folder),
            registry,
            run_id,
            key=key(train_key),
        )
    run.at("evaluate")
    production = production_for(registry, spec.task, base.fingerprint)
    production_version = production.version if production else None
    evaluation = evaluate_task(
        spec,
        prepared,
        str(base_path),
        trained.adapter,
        production,
        key=key("evaluate", train_key, production_version, spec.gate.model_dump()),
    )
    tracking.log_evaluation(registry.runs, run_id, evaluation, trained)
    adapter, ranking = trained.adapter, None
    if spec.promotion.rank is not None:
        run.at("rank")
        ranking = unless_gone(
            rank_task,
            lambda r: r.adapter,
            spec,
            prepared,
            str(base_path),
            adapter,
            evaluation,
            production,
            str(folder / "ranked"),
            key=key("rank", train_key, production_version, spec.promotion.model_dump(), spec.gate.model_dump()),
        )
        adapter, evaluation = ranking.adapter, ranking.evaluation
    merged = None
    if spec.promotion.mode == "merged":
        run.at("merge")
        merged = unless_gone(
            merge_task,
            str,
            spec,
            prepared,
            str(base_path),
            adapter,
            str(folder / "merged"),
            key=key("merge", train_key, adapter),
        )
    run.at("analyze")
    analysis = unless_gone(
        analyze_task,
        lambda a: a.folder,
        spec,
        trained.adapter,
        str(base_path),
        str(folder / "analysis"),
        key=key("analyze", train_key),
    )
    registry.runs.log_artifacts(run_id, analysis.folder, "analysis")
    run.at("register")
    version = register_task(
        registry,
        spec,
        adapter,
        merged,
        base,
        prepared,
        evaluation,
        run_id,
        spectrum_tags(analysis, ranking),
        ranking.reason if ranking else None,
        search_tags(search) if search else None,
    )
    name_run(f"{spec.task}-v{version}")
    if not evaluation.passed:
        raise GateBlocked(spec.task, version, run_id, evaluation.reasons)
    promotion = None
    if spec.promotion.auto:
        run.at("promote")
        promotion = promote_task(registry, spec, version)
    return FlowResult(
        task=spec.task,
        version=version,
        run_id=run_id,
        trained=trained,
        evaluation=evaluation,
        ranking=ranking,
        analysis=analysis,
        promotion=promotion,
        search=search,
    )
