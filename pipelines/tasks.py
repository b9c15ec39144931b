"""The flow's steps as Prefect tasks: each wraps a plain step function (steps.py, ranking.py, analysis.py), adds its
Prefect artifact, and is cached by the key the flow passes (learning steps, JSON results, no pickle) or retried on a
transient server fault (register, promote)."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.states import State

from registry import AdapterRegistry, BaseRecord
from registry.code_version import code_version
from registry.faults import retry_step
from registry.records import Promotion

from . import steps, tracking
from .analysis import analyze_adapter
from .lifecycle import quiet_expected_failures
from .models import free_memory
from .results import Analysis, Evaluation, PreparedData, ProductionVersion, Ranking, TrainedAdapter
from .spec import TaskSpec

SMALL_VALIDATION = 50
LOADER_MODULE = "pipelines.pyfunc"  # what every registered MLflow Model's pyfunc flavour loads
quiet_expected_failures()


P = ParamSpec("P")
R = TypeVar("R")


def by_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    return parameters["key"]


def cached(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A learning step: its result cached as JSON under the cache key the flow passes as `key`."""
    return task(name=name, persist_result=True, result_serializer="json", cache_key_fn=by_key)


def unless_gone(step: Task[P, R], files: Callable[[R], str], *args: P.args, **kwargs: P.kwargs) -> R:
    """`step`'s result, from its cache unless the files that result names are gone: then the step runs again. Prefect
    keeps its cache under PREFECT_HOME; where that is not inside the loraops home, a deleted home (or work folder)
    would otherwise serve results naming folders that no longer exist."""
    result = step(*args, **kwargs)
    if Path(files(result)).exists():
        return result
    return step.with_options(refresh_cache=True)(*args, **kwargs)


def table(rows: dict[str, object]) -> str:
    """A two-column markdown table for a Prefect artifact."""
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def source_key(spec: TaskSpec, registry: AdapterRegistry) -> str:
    """What prepare_data's output depends on: the files' bytes (their digests, cached by file identity, or the S3
    ETag) and the data settings."""

    def digest(path: str | None) -> str | None:
        if path is None:
            return None
        if path.startswith("s3://"):
            from registry.s3 import object_etag

            return object_etag(path)
        return registry.digests.get(Path(path)).sha256 if Path(path).is_file() else path

    return steps.cache_key(
        "prepare",
        spec.type,
        spec.data.model_dump(),
        digest(spec.resolve(spec.data.path)),
        digest(spec.resolve(spec.data.test_path)),
        code_version(),
    )


def train_key(spec: TaskSpec, prepared: PreparedData, base_fingerprint: str) -> str:
    """What the trained adapter depends on: its work folder is work/<task>/<key[:16]> (a search's trials too)."""
    return steps.cache_key(
        "train",
        prepared.digest,
        base_fingerprint,
        spec.base.load_in_4bit,
        spec.type,
        spec.lora.model_dump(mode="json"),
        spec.training.model_dump(mode="json", exclude={"threads", "search"}),  # neither changes the adapter
        code_version(),
    )


def data_artifact(spec: TaskSpec, prepared: PreparedData) -> None:
    for warning in prepared.warnings:
        print(f"{spec.task}: warning: {warning}")
    if 0 < prepared.validation < SMALL_VALIDATION:
        print(
            f"{spec.task}: the validation split has only {prepared.validation} examples, so the pass chosen on it "
            f"is noisy (below about {SMALL_VALIDATION}); add data or raise data.validation_fraction"
        )
    create_markdown_artifact(
        table(
            {
                "source": prepared.source,
                "train": prepared.train,
                "test": prepared.test,
                "labels": prepared.labels,
                "digest": prepared.digest,
            }
        ),
        key=f"{spec.task}-data",
        description="prepare_data",
    )


@cached("prepare_data")
def prepare_data_task(spec: TaskSpec, work: str, key: str) -> PreparedData:
    prepared = steps.prepare_data(spec, Path(work))
    data_artifact(spec, prepared)
    return prepared


@cached("train")
def train_task(
    spec: TaskSpec, prepared: PreparedData, base_path: str, work: str, registry: AdapterRegistry, run_id: str, key: str
) -> TrainedAdapter:
    if spec.training.nproc > 1 or spec.training.nnodes > 1:  # rank 0 of torchrun logs to the run itself
        from .distributed import train_with_torchrun

        trained = train_with_torchrun(spec, prepared, Path(base_path), Path(work), run_id, registry.settings)
    else:
        log = tracking.StepLog(registry.runs, run_id)
        every = max(1, steps.total_steps(spec, prepared.train) // 10)

        def on_step(step: int, loss: float, lr: float) -> None:
            log(step, loss, lr)
            if step % every == 0:
                print(f"{spec.task}: step {step} loss {loss:.4f} lr {lr:.2e}")

        def on_validation(step: int, metrics: dict[str, float]) -> None:
            log.validation(step, metrics)
            print(f"{spec.task}: step {step} validation " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

        trained = steps.fit_adapter(spec, prepared, Path(base_path), Path(work), on_step, on_validation)
        log.flush()
    free_memory()  # the trained model is garbage now; evaluate loads the base again
    create_markdown_artifact(
        table(trained.model_dump(exclude={"best_validation"})), key=f"{spec.task}-train", description="train"
    )
    return trained


@cached("evaluate")
def evaluate_task(
    spec: TaskSpec, prepared: PreparedData, base_path: str, adapter: str, production: ProductionVersion | None, key: str
) -> Evaluation:
    evaluation = steps.evaluate_adapter(spec, prepared, Path(base_path), adapter, production)
    free_memory()
    measured = {
        "base": evaluation.base,
        "adapter": evaluation.adapter,
        "merged": evaluation.merged,
        "production": evaluation.production or {},
    }
    rows: dict[str, object] = {
        f"{row} {name}": f"{value:.4f}" for row, values in measured.items() for name, value in values.items()
    }
    rows |= {
        "merge gap": f"{evaluation.merge_gap:.2e}",
        "gate": "passed" if evaluation.passed else "blocked: " + "; ".join(evaluation.reasons),
    }
    create_markdown_artifact(table(rows), key=f"{spec.task}-evaluate", description="evaluate")
    return evaluation


@cached("rank")
def rank_task(
    spec: TaskSpec,
    prepared: PreparedData,
    base_path: str,
    adapter: str,
    evaluation: Evaluation,
    production: ProductionVersion | None,
    out: str,
    key: str,
) -> Ranking:
    from .ranking import choose_rank

    ranking = choose_rank(spec, prepared, Path(base_path), adapter, evaluation, production, Path(out))
    free_memory()
    print(f"{spec.task}: rank {'shipped' if ranking.shipped else 'kept'}: {ranking.reason}")
    create_markdown_artifact(
        table(ranking.model_dump(include={"trained_rank", "rank", "shipped", "metric_delta", "bytes_saved", "reason"})),
        key=f"{spec.task}-rank",
        description="rank",
    )
    return ranking


@cached("merge")
def merge_task(spec: TaskSpec, prepared: PreparedData, base_path: str, adapter: str, out: str, key: str) -> str:
    merged = steps.merge_model(spec, prepared, Path(base_path), adapter, Path(out))
    create_markdown_artifact(table({"merged model": merged}), key=f"{spec.task}-merge", description="merge")
    return merged


@cached("analyze")
def analyze_task(spec: TaskSpec, adapter: str, base_path: str, out: str, key: str) -> Analysis:
    analysis = analyze_adapter(adapter, base_path, Path(out))
    advice = analysis.recommended_rank
    amplification = f"{analysis.mean_amplification:.1f}" if analysis.mean_amplification is not None else "-"
    create_markdown_artifact(
        table(
            {
                "r": analysis.r,
                "rank for 90/95/99% of |dW|^2": f"{advice.p90}/{advice.p95}/{advice.p99}",
                "elbow": advice.elbow,
                "mean effective rank": f"{analysis.mean_effective_rank:.2f}",
                "mean amplification": amplification,
            }
        ),
        key=f"{spec.task}-analyze",
        description="analyze",
    )
    return analysis


def transient(task: object, task_run: object, state: State) -> bool:
    """Retry a step only for a server fault that did not time out (registry/faults.py): bad input fails the same
    way every time, and a timeout already took its client's whole bound."""
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - the step's own failure, classified
        return retry_step(e)
    return False


def retried(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A step that talks to servers: retried twice for a transient fault (after 5 s, then 20 s), never cached."""
    return task(name=name, retries=2, retry_delay_seconds=[5, 20], retry_condition_fn=transient, cache_policy=NO_CACHE)


@retried("register")
def register_task(
    registry: AdapterRegistry,
    spec: TaskSpec,
    adapter: str,
    merged: str | None,
    base: BaseRecord,
    prepared: PreparedData,
    evaluation: Evaluation,
    run_id: str,
    spectrum: dict[str, float],
    rank_note: str | None,
    extra_tags: dict[str, str] | None = None,
) -> int:
    metrics = {
        f"{row}_{name}": v
        for row, values in (("adapter", evaluation.adapter), ("base", evaluation.base))
        for name, v in values.items()
    }
    example = [e.text for e in steps.read_split(prepared, "test")[:2]]
    verdict = "gate passed" if evaluation.passed else "gate blocked: " + "; ".join(evaluation.reasons)
    record = registry.register(
        spec.task,
        adapter,
        base,
        prepared.digest,
        metrics,
        merged_dir=merged,
        run_id=run_id,
        input_example=example,
        spectrum=spectrum,
        loader_module=LOADER_MODULE,
        gate="passed" if evaluation.passed else "blocked",
        description=verdict + (f"; rank: {rank_note}" if rank_note else ""),
        extra_tags=extra_tags,
    )
    create_markdown_artifact(
        table(
            {
                "version": record.version,
                "aliases": ", ".join(record.aliases),
                "base": f"{record.base_name} ({record.base_fingerprint[:12]})",
            }
        ),
        key=f"{spec.task}-register",
        description="register",
    )
    return record.version


@retried("promote")
def promote_task(registry: AdapterRegistry, spec: TaskSpec, version: int) -> Promotion:
    promotion = registry.promote(
        spec.task,
        version,
        spec.promotion.mode,
        spec.promotion.target,
        reason="gate passed",
        progress=False,
        serve_with=spec.promotion.serve_with,
    )
    create_markdown_artifact(
        table(
            {
                "version": version,
                "mode": promotion.mode,
                "uri": promotion.uri,
                "uploaded": len(promotion.uploaded),
                "already there": len(promotion.skipped),
            }
        ),
        key=f"{spec.task}-promote",
        description="promote",
    )
    return promotion
