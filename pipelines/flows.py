"""The Prefect flow `train_adapter`: prepare_data → train → evaluate → merge → analyze → register → promote.

Each step is a task over the plain functions in `steps`, cached by content fingerprints (an
unchanged re-run is served from cache) with JSON results (no pickle). The MLflow run of the flow
gets the parameters, dataset, per-step loss and lr, metrics, and the analysis report and plots.
"""

import math
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from registry import AdapterRegistry, BaseRecord, RegistryError, RegistrySettings
from registry.aliases import DriftError
from registry.code_version import code_version
from registry.faults import is_transient, network_defaults
from registry.fingerprint import sha256_file

from . import steps, tracking
from .models import base_source, free_memory, resolve_base
from .preflight import preflight
from .spec import SpecError, TaskSpec, load_spec

CACHED = {"persist_result": True, "result_serializer": "json", "cache_key_fn": lambda context, parameters: parameters["key"]}


def table(rows: dict) -> str:
    """A two-column markdown table for a Prefect artifact."""
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def data_digest(spec: TaskSpec) -> str:
    """What prepare_data's output depends on: the files' bytes (or S3 ETags) and the data settings."""
    def digest(path: str | None) -> str | None:
        if path is None:
            return None
        if path.startswith("s3://"):
            import boto3
            bucket, _, key = path[5:].partition("/")
            return boto3.client("s3").head_object(Bucket=bucket, Key=key)["ETag"]
        return sha256_file(Path(path)) if Path(path).is_file() else path
    return steps.fingerprint("prepare", spec.type, spec.data.model_dump(), digest(spec.resolve(spec.data.path)),
                             digest(spec.resolve(spec.data.test_path)), code_version())


SMALL_VALIDATION = 50


@task(name="prepare_data", **CACHED)
def prepare_data_task(spec: TaskSpec, work: str, key: str) -> dict:
    prepared = steps.prepare_data(spec, Path(work))
    if 0 < prepared["validation"] < SMALL_VALIDATION:
        print(f"{spec.task}: the validation split has only {prepared['validation']} examples, so the pass chosen on it "
              f"is noisy (below about {SMALL_VALIDATION}); add data or raise data.validation_fraction")
    create_markdown_artifact(table({k: prepared[k] for k in ("source", "train", "test", "labels", "fingerprint")}),
                             key=f"{spec.task}-data", description="prepare_data")
    return prepared


@task(name="train", **CACHED)
def train_task(spec: TaskSpec, prepared: dict, base_path: str, work: str, run_id: str, key: str) -> dict:
    if spec.training.nproc > 1 or spec.training.nnodes > 1:  # rank 0 of torchrun logs to the run itself
        from .distributed import train_with_torchrun
        result = train_with_torchrun(spec, prepared, Path(base_path), Path(work), run_id)
    else:
        log = tracking.StepLog(AdapterRegistry(), run_id)
        every = max(1, steps.total_steps(spec, prepared["train"]) // 10)

        def on_step(step, loss, lr):
            log(step, loss, lr)
            if step % every == 0:
                print(f"{spec.task}: step {step} loss {loss:.4f} lr {lr:.2e}")

        def on_eval(step, metrics):
            log.validation(step, metrics)
            print(f"{spec.task}: step {step} validation " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        result = steps.train_adapter(spec, prepared, Path(base_path), Path(work), on_step, on_eval)
        log.flush()
    free_memory()  # the trained model is garbage now; evaluate loads the base again
    create_markdown_artifact(table(result), key=f"{spec.task}-train", description="train")
    return result


@task(name="evaluate", **CACHED)
def evaluate_task(spec: TaskSpec, prepared: dict, base_path: str, adapter: str, production: dict | None, key: str) -> dict:
    evaluation = steps.evaluate(spec, prepared, Path(base_path), adapter, production)
    free_memory()
    rows = {f"{row} {name}": f"{value:.4f}" for row in ("base", "adapter", "merged", "production")
            for name, value in evaluation.get(row, {}).items()}
    rows |= {"merge gap": f"{evaluation['merge_gap']:.2e}", "gate": "passed" if evaluation["passed"] else
             "blocked: " + "; ".join(evaluation["reasons"])}
    create_markdown_artifact(table(rows), key=f"{spec.task}-evaluate", description="evaluate")
    return evaluation


@task(name="rank", **CACHED)
def rank_task(spec: TaskSpec, prepared: dict, base_path: str, adapter: str, evaluation: dict, production: dict | None,
              out: str, key: str) -> dict:
    from .ranking import choose_rank
    ranking = choose_rank(spec, prepared, Path(base_path), adapter, evaluation, production, Path(out))
    free_memory()
    print(f"{spec.task}: rank {'shipped' if ranking['shipped'] else 'kept'}: {ranking['reason']}")
    create_markdown_artifact(table({k: ranking[k] for k in ("trained_rank", "rank", "shipped", "metric_delta",
                                                            "bytes_saved", "reason")}),
                             key=f"{spec.task}-rank", description="rank")
    return ranking


@task(name="merge", **CACHED)
def merge_task(spec: TaskSpec, prepared: dict, base_path: str, adapter: str, out: str, key: str) -> str:
    merged = steps.merge_model(spec, prepared, Path(base_path), adapter, Path(out))
    create_markdown_artifact(table({"merged model": merged}), key=f"{spec.task}-merge", description="merge")
    return merged


@task(name="analyze", **CACHED)
def analyze_task(spec: TaskSpec, adapter: str, base_path: str, out: str, key: str) -> dict:
    from .cli.rank import analyze
    report = analyze(adapter, base_path, None, out, print_=lambda *_: None)
    s = report["summary"]
    create_markdown_artifact(table({"r": s["r"], "rank for 90/95/99% of |dW|^2": "/".join(
        str(s["recommended_rank"][k]) for k in ("90", "95", "99")), "elbow": s["recommended_rank"]["elbow"],
        "mean effective rank": f"{s['mean_effective_rank']:.2f}", "mean amplification": f"{s.get('mean_amplification', 0):.1f}"}),
        key=f"{spec.task}-analyze", description="analyze")
    return {"summary": s, "folder": out}


def spectrum_of(summary: dict, ranking: dict | None = None) -> dict[str, float]:
    """The analysis numbers a version carries as tags: uniform ranks for 90/95/99% of |dW|^2, the elbow, the mean
    effective rank, (the base known) the mean amplification; with promotion.rank, the trained and shipped ranks, the
    compressed adapter's metric delta and the bytes it saved."""
    spectrum = {f"rank_at_{k}": summary["recommended_rank"][k] for k in ("90", "95", "99")}
    spectrum |= {"elbow": summary["recommended_rank"]["elbow"], "effective_rank": summary["mean_effective_rank"]}
    if math.isfinite(summary.get("mean_amplification", math.inf)):  # inf where ΔW is orthogonal to W
        spectrum["amplification"] = summary["mean_amplification"]
    if ranking:
        spectrum |= {"trained_rank": ranking["trained_rank"], "shipped_rank": ranking["rank"],
                     "compressed_metric_delta": ranking["metric_delta"], "compressed_bytes_saved": ranking["bytes_saved"]}
    return spectrum


def transient(task, task_run, state) -> bool:
    """Retry a step only for a server fault (registry/faults.py); bad input fails the same way every time."""
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - the step's own failure, classified
        return is_transient(e)
    return False


RETRY = {"retries": 2, "retry_delay_seconds": [5, 20], "retry_condition_fn": transient}


@task(name="register", **RETRY)
def register_task(spec: TaskSpec, adapter: str, merged: str | None, base: dict, prepared: dict, evaluation: dict,
                  run_id: str, spectrum: dict[str, float] | None = None, rank_note: str | None = None) -> dict:
    registry = AdapterRegistry()
    metrics = {f"{row}_{name}": v for row in ("adapter", "base") for name, v in evaluation[row].items()}
    example = [e.text for e in steps.read_split(prepared, "test")[:2]]
    record = registry.register(spec.task, adapter, BaseRecord(**base), prepared["fingerprint"], metrics,
                               merged_dir=merged, run_id=run_id, input_example=example, spectrum=spectrum,
                               description=("gate passed" if evaluation["passed"] else
                                            "gate blocked: " + "; ".join(evaluation["reasons"]))
                               + (f"; rank: {rank_note}" if rank_note else ""))
    create_markdown_artifact(table({"version": record.version, "aliases": ", ".join(record.aliases),
                                    "base": f"{record.base_name} ({record.base_fingerprint[:12]})"}),
                             key=f"{spec.task}-register", description="register")
    return record.model_dump()


@task(name="promote", **RETRY)
def promote_task(spec: TaskSpec, version: int) -> dict:
    promotion = AdapterRegistry().promote(spec.task, version, spec.promotion.mode, spec.promotion.target,
                                          reason="gate passed", progress=False, serve_with=spec.promotion.serve_with)
    create_markdown_artifact(table({"version": version, "mode": promotion.mode, "uri": promotion.uri,
                                    "uploaded": len(promotion.uploaded), "already there": len(promotion.skipped)}),
                             key=f"{spec.task}-promote", description="promote")
    return promotion.model_dump()


def refuse_drift(registry: AdapterRegistry, task_name: str) -> None:
    """An alias moved outside loraops stops the run before training (promotion would refuse it after)."""
    try:
        registry.book.settle(task_name, None, "promote")
    except DriftError:
        raise
    except RegistryError:  # a task with no versions yet
        pass


def production_for(registry: AdapterRegistry, task_name: str, base_fingerprint: str) -> dict | None:
    """The current production version to compare with: its adapter if on the same base, else its recorded metrics."""
    try:
        record = registry.resolve(task_name, "production")
    except ValueError:
        return None
    metrics = {k.removeprefix("adapter_"): v for k, v in record.metrics.items() if k.startswith("adapter_")}
    same_base = record.base_fingerprint == base_fingerprint
    return {"version": record.version, "metrics": metrics,
            "adapter": str(registry.fetch(task_name, record.version)) if same_base else None}


def run_name() -> str:
    """`<task>-<UTC time>` while it runs (renamed `<task>-v<N>` once registered): the Prefect UI reads like a log."""
    from prefect.runtime import flow_run
    path = Path(flow_run.parameters["spec_path"])
    try:
        name = load_spec(path).task
    except SpecError:
        name = path.stem
    return f"{name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"


def name_run(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=name)


@flow(name="train_adapter", flow_run_name=run_name, log_prints=True)
def train_adapter(spec_path: str, checked: bool = False) -> dict:
    """One task, end to end. Returns what was trained, measured, registered and promoted."""
    network_defaults()
    spec = load_spec(spec_path)
    if not checked:  # `loraops run` checked it already, before starting Prefect; a worker's run has not
        preflight(spec, RegistrySettings.from_env())
    registry = AdapterRegistry(RegistrySettings.from_env())
    if spec.promotion.auto:
        refuse_drift(registry, spec.task)
    work = registry.settings.home / "work" / spec.task

    def key(*parts) -> str:  # cache entries belong to one $LORAOPS_HOME: their results name files in it
        return steps.fingerprint(str(work), *parts)
    prepared = prepare_data_task(spec, str(work), key=key(data_digest(spec)))
    base_path, base_name = resolve_base(spec.base)
    base = registry.register_base(base_path, name=base_name, source=base_source(spec.base, base_path),
                                  revision=spec.base.revision)
    run_id = tracking.start_run(registry, spec, prepared, base)
    train_key = steps.fingerprint("train", prepared["fingerprint"], base.fingerprint, spec.base.load_in_4bit, spec.type,
                                  spec.lora.model_dump(mode="json"), spec.training.model_dump(mode="json"), code_version())
    folder = work / train_key[:16]
    trained = train_task(spec, prepared, str(base_path), str(folder), run_id, key=key(train_key))
    if not Path(trained["adapter"]).is_dir():  # cached result whose files were deleted: train again
        trained = train_task.with_options(refresh_cache=True)(spec, prepared, str(base_path), str(folder), run_id,
                                                              key=key(train_key))
    production = production_for(registry, spec.task, base.fingerprint)
    evaluation = evaluate_task(spec, prepared, str(base_path), trained["adapter"], production,
                               key=key("evaluate", train_key, production and production["version"], spec.gate.model_dump()))
    tracking.log_metrics(registry, run_id, evaluation)
    adapter, ranking = trained["adapter"], None
    if spec.promotion.rank is not None:
        ranking = rank_task(spec, prepared, str(base_path), adapter, evaluation, production, str(folder / "ranked"),
                            key=key("rank", train_key, production and production["version"],
                                    spec.promotion.model_dump(), spec.gate.model_dump()))
        adapter, evaluation = ranking["adapter"], ranking["evaluation"]
    merged = None
    if spec.promotion.mode == "merged":
        merged = merge_task(spec, prepared, str(base_path), adapter, str(folder / "merged"),
                            key=key("merge", train_key, adapter))
    analysis = analyze_task(spec, trained["adapter"], str(base_path), str(folder / "analysis"),
                            key=key("analyze", train_key))
    registry.client.log_artifacts(run_id, analysis["folder"], "analysis")
    record = register_task(spec, adapter, merged, base.model_dump(), prepared, evaluation, run_id,
                           spectrum_of(analysis["summary"], ranking), ranking and ranking["reason"])
    name_run(f"{spec.task}-v{record['version']}")
    promotion = None
    if evaluation["passed"] and spec.promotion.auto:
        promotion = promote_task(spec, record["version"])
    registry.client.set_terminated(run_id)
    return {"task": spec.task, "version": record["version"], "trained": trained, "evaluation": evaluation,
            "ranking": ranking, "analysis": analysis["summary"], "promotion": promotion, "run_id": run_id}
