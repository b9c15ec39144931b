"""The Prefect flow `train_adapter`: prepare_data → train → evaluate → rank → merge → analyze → register → promote.

Each step is a Prefect task (tasks.py) over a plain function (steps.py, ranking.py, analysis.py) that takes and returns typed
values (results.py). The learning steps are cached by cache keys over their inputs (an unchanged re-run is served
from cache) with JSON results (no pickle). One registry serves the whole flow; its MLflow run ends FINISHED,
FAILED with the reason, or KILLED (lifecycle.py).
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow

from registry import AdapterRegistry, BaseRecord, RegistrySettings
from registry.faults import network_defaults

from . import steps, tasks, tracking
from .analysis import spectrum_tags
from .errors import GateBlocked, InputError
from .fanout import pool_slots
from .lifecycle import RunLifecycle
from .models import base_source, resolve_base
from .preflight import preflight
from .results import FlowResult, PreparedData, ProductionVersion, SearchSummary, TrainedAdapter
from .search import run_search, search_tags, trial_task
from .spec import SearchSpec, TaskSpec, load_spec
from .study import check_study, plan_study
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
)
from .threads import use_threads
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


@flow(name="train_adapter", flow_run_name=run_name, log_prints=True)
def train_adapter(spec_path: str, prepared: PreparedData | None = None, search: SearchSpec | None = None) -> FlowResult:
    """One task, end to end. `prepared`: the data as `loraops run` already checked and prepared it (a worker's run
    prepares it here). `search` (default training.search): tune first (search.py), then ship the best trial.
    Raises GateBlocked when the gate blocks (the version stays a candidate)."""
    with pool_slot():
        return run_task(spec_path, prepared, search)


def run_task(spec_path: str, prepared: PreparedData | None, search: SearchSpec | None) -> FlowResult:
    """train_adapter's body, inside its pool slot."""
    network_defaults()
    spec = load_spec(spec_path)
    threads = use_threads(spec.training.threads)  # before any step: the run's share of the CPUs, not all of them
    print(f"{spec.task}: {threads.threads} thread(s): {threads.reason}")
    settings = RegistrySettings.from_env()
    if prepared is None:  # `loraops run` checked the task before starting Prefect; a worker's run has not
        preflight(spec, settings)
    registry = AdapterRegistry(settings)
    if spec.promotion.auto:
        registry.check_drift(spec.task)  # an alias moved outside loraops stops the run before training
    work = settings.home / "work" / spec.task

    def key(*parts: object) -> str:  # cache entries belong to one $LORAOPS_HOME: their results name files in it
        return steps.cache_key(str(work), *parts)

    if prepared is None:
        prepared = prepare_data_task(spec, str(work), key=key(source_key(spec, registry)))
    else:
        data_artifact(spec, prepared)
    base_path, base_name = resolve_base(spec.base)
    base = registry.register_base(
        base_path, name=base_name, source=base_source(spec.base, base_path), revision=spec.base.revision
    )
    search = search or spec.training.search
    plan = plan_study(spec, search, prepared, settings) if search else None
    if plan:
        check_study(plan)  # another task's study, other data or another space: bad input, before the run starts
    run_id = tracking.start_run(registry, spec, prepared, base, threads)
    with RunLifecycle(registry.runs, spec.task, run_id) as run:
        if search is None or plan is None:
            return run_steps(spec, prepared, registry, base, base_path, work, run, key)
        run.at("search")
        ground = TrialGround(prepared, str(base_path), base.fingerprint, str(work), registry, run_id)
        found = run_search(spec, search, plan, ground, trial_task)
        registry.runs.log_params(run_id, {f"search.best.{k}": f"{v:g}" for k, v in found.summary.best_params.items()})
        return run_steps(found.spec, prepared, registry, base, base_path, work, run, key, found.trained, found.summary)


def run_steps(
    spec: TaskSpec,
    prepared: PreparedData,
    registry: AdapterRegistry,
    base: BaseRecord,
    base_path: Path,
    work: Path,
    run: RunLifecycle,
    key: Callable[..., str],
    trained: TrainedAdapter | None = None,
    search: SearchSummary | None = None,
) -> FlowResult:
    """The steps after the MLflow run started; `run.at` names the one running, for the failure's line. `trained`:
    the adapter a search's best trial trained already (`search` says which), else this trains it."""
    run_id = run.run_id
    train_key = tasks.train_key(spec, prepared, base.fingerprint)
    folder = work / train_key[:16]
    run.at("train")
    if trained is None:
        trained = train_task(spec, prepared, str(base_path), str(folder), registry, run_id, key=key(train_key))
    if not Path(trained.adapter).is_dir():  # cached result whose files were deleted: train again
        trained = train_task.with_options(refresh_cache=True)(
            spec, prepared, str(base_path), str(folder), registry, run_id, key=key(train_key)
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
    tracking.log_evaluation(registry.runs, run_id, evaluation)
    adapter, ranking = trained.adapter, None
    if spec.promotion.rank is not None:
        run.at("rank")
        ranking = rank_task(
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
        merged = merge_task(
            spec, prepared, str(base_path), adapter, str(folder / "merged"), key=key("merge", train_key, adapter)
        )
    run.at("analyze")
    analysis = analyze_task(
        spec, trained.adapter, str(base_path), str(folder / "analysis"), key=key("analyze", train_key)
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
