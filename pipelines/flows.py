"""The Prefect flow `train_adapter`: prepare_data → train → evaluate → rank → merge → analyze → register → promote.

Each step is a Prefect task (tasks.py) over a plain function (steps.py, ranking.py, analysis.py) that takes and returns typed
values (results.py). The learning steps are cached by cache keys over their inputs (an unchanged re-run is served
from cache) with JSON results (no pickle). One registry serves the whole flow; its MLflow run ends FINISHED,
FAILED with the reason, or KILLED (lifecycle.py).
"""

from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow

from registry import AdapterRegistry, BaseRecord, RegistrySettings
from registry.code_version import code_version
from registry.faults import network_defaults

from . import steps, tracking
from .analysis import spectrum_tags
from .errors import GateBlocked, SpecError
from .lifecycle import RunLifecycle
from .models import base_source, resolve_base
from .preflight import preflight
from .results import FlowResult, PreparedData, ProductionVersion
from .spec import TaskSpec, load_spec
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
    except SpecError:
        name = path.stem
    return f"{name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def name_run(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=name)


@flow(name="train_adapter", flow_run_name=run_name, log_prints=True)
def train_adapter(spec_path: str, prepared: PreparedData | None = None) -> FlowResult:
    """One task, end to end. `prepared`: the data as `loraops run` already checked and prepared it (a worker's run
    prepares it here). Raises GateBlocked when the gate blocks (the version stays a candidate)."""
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
    run_id = tracking.start_run(registry, spec, prepared, base, threads)
    with RunLifecycle(registry.runs, spec.task, run_id) as run:
        return run_steps(spec, prepared, registry, base, base_path, work, run, key)


def run_steps(
    spec: TaskSpec,
    prepared: PreparedData,
    registry: AdapterRegistry,
    base: BaseRecord,
    base_path: Path,
    work: Path,
    run: RunLifecycle,
    key: Callable[..., str],
) -> FlowResult:
    """The steps after the MLflow run started; `run.at` names the one running, for the failure's line."""
    run_id = run.run_id
    train_key = steps.cache_key(
        "train",
        prepared.digest,
        base.fingerprint,
        spec.base.load_in_4bit,
        spec.type,
        spec.lora.model_dump(mode="json"),
        spec.training.model_dump(mode="json", exclude={"threads"}),  # threads change the speed, not the adapter
        code_version(),
    )
    folder = work / train_key[:16]
    run.at("train")
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
    )
