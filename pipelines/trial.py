"""One trial of a search: the task with the trial's parameters, trained in a child MLflow run of the task's run.

Each validation pass reports the trial's metric to Optuna (step = the pass's number, so trials of different lengths
compare at the same share of their training); when the pruner says so, training stops there. A loss that diverges
ends the trial as pruned too: a rate too high for the data is an answer about the space, not a failure of the run.
"""

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from registry import AdapterRegistry

from . import steps, tracking
from .errors import TrainingDiverged
from .lifecycle import interrupted_by, one_line
from .results import Metrics, PreparedData, TrialOutcome
from .spec import SEARCHABLE, SearchSpec, TaskSpec
from .tasks import train_key

if TYPE_CHECKING:
    import optuna


def suggest(trial: "optuna.Trial", search: SearchSpec) -> dict[str, float]:
    """The trial's values: r an integer on a log scale, lr and alpha log-uniform, epochs uniform."""
    params: dict[str, float] = {}
    for name, (low, high) in search.space.items():
        _, integer, log = SEARCHABLE[name]
        if integer:
            params[name] = trial.suggest_int(name, int(low), int(high), log=log)
        else:
            params[name] = trial.suggest_float(name, low, high, log=log)
    return params


def trial_spec(spec: TaskSpec, params: dict[str, float]) -> TaskSpec:
    """The task as one trial trains it. A searched r without alpha keeps the task's alpha/r (the update's scale)."""
    lora: dict[str, object] = {}
    if "r" in params:
        lora |= {"r": int(params["r"]), "alpha": spec.lora.alpha * params["r"] / spec.lora.r}
    if "alpha" in params:
        lora["alpha"] = params["alpha"]
    training: dict[str, object] = {"search": None}
    if "lr" in params:
        training["lr"] = params["lr"]
    if "epochs" in params:
        training |= {"epochs": params["epochs"], "max_steps": None}
    return spec.model_copy(
        update={"lora": spec.lora.model_copy(update=lora), "training": spec.training.model_copy(update=training)}
    )


class TrialGround(NamedTuple):
    """What every trial of one search shares: the data, the base, the work folder, the registry, the parent run."""

    prepared: PreparedData
    base_path: str
    base_fingerprint: str
    work: str
    registry: AdapterRegistry
    parent_run_id: str


def run_trial(
    spec: TaskSpec, trial: "optuna.Trial", params: dict[str, float], metric: str, ground: TrialGround
) -> TrialOutcome:
    """Train the task with `params` (trial_spec) in a child run of `parent_run_id`: complete with the best
    validation pass's `metric`, pruned by the median of earlier trials, or diverged."""
    import optuna

    runs, trained_spec, prepared = ground.registry.runs, trial_spec(spec, params), ground.prepared
    run_id = runs.start(
        spec.task,
        f"trial {trial.number} {spec.task}",
        {
            "mlflow.parentRunId": ground.parent_run_id,
            "loraops.task": spec.task,
            "loraops.trial": str(trial.number),
            "loraops.study": trial.study.study_name,
        },
    )
    runs.log_params(run_id, {name: f"{value:g}" for name, value in params.items()})
    folder = Path(ground.work) / train_key(trained_spec, prepared, ground.base_fingerprint)[:16]
    log, passes = tracking.StepLog(runs, run_id), []

    def on_validation(step: int, metrics: Metrics) -> None:
        log.validation(step, metrics)
        passes.append(step)
        trial.report(metrics[metric], len(passes))
        if trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned at validation pass {len(passes)} (step {step}): {metric} {metrics[metric]:.4f} below the "
                f"median of earlier trials there"
            )

    def outcome(state: str, reason: str, trained=None, value=None) -> TrialOutcome:
        log.flush()
        if state == "complete":
            runs.end(run_id)
        else:
            runs.end(run_id, "KILLED" if state == "pruned" else "FAILED", reason)
        if state != "complete":
            shutil.rmtree(folder, ignore_errors=True)  # its checkpoint would resume a run nobody wants
        return TrialOutcome(
            number=trial.number, state=state, value=value, trained=trained, run_id=run_id, reason=reason
        )

    try:
        trained = steps.fit_adapter(trained_spec, prepared, Path(ground.base_path), folder, log, on_validation)
    except optuna.TrialPruned as e:
        return outcome("pruned", str(e))
    except TrainingDiverged as e:
        return outcome("diverged", one_line(e))
    except BaseException as e:
        log.flush()
        runs.end(run_id, "KILLED" if interrupted_by(e) else "FAILED", one_line(e))
        raise
    assert trained.best_validation is not None  # a search needs a validation split (spec.py)
    value = trained.best_validation.metrics[metric]
    runs.log_metrics(run_id, {f"best_val_{metric}": value, "train_seconds": trained.seconds})
    return outcome("complete", f"{metric} {value:.4f} at step {trained.best_step}", trained, value)
