"""The MLflow run of one training flow: parameters, dataset input, per-step loss and lr, metrics, its end.

Everything goes through the registry's run-tracking facade (`AdapterRegistry.runs`), never MLflow directly.
"""

import json
import time
from collections.abc import Mapping

from registry import AdapterRegistry, BaseRecord, MetricPoint, RunTracking
from registry.code_version import code_version

from .results import Evaluation, Metrics, PreparedData, TrainedAdapter
from .spec import TaskSpec
from .threads import Threads

FLUSH_EVERY = 50


def flatten(values: Mapping[str, object], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return flat


def start_run(registry: AdapterRegistry, spec: TaskSpec, prepared: PreparedData, base: BaseRecord) -> str:
    """A new run with the task's tags, its settings as parameters, and its dataset."""
    runs = registry.runs
    run_id = runs.start(
        spec.task,
        f"train {spec.task}",
        {
            "loraops.task": spec.task,
            "loraops.base.fingerprint": base.fingerprint,
            "loraops.dataset.fingerprint": prepared.digest,
            "loraops.code.version": code_version(),
        },
    )
    runs.log_params(run_id, flatten(spec.model_dump(mode="json", exclude={"source"})))
    log_data(runs, run_id, spec.task, prepared)
    return run_id


def log_data(runs: RunTracking, run_id: str, task: str, prepared: PreparedData) -> None:
    """The run's dataset (an MLflow dataset input): at the start, and again for a refit, which trains on other
    splits of the same files than the search did."""
    runs.log_dataset(
        run_id,
        f"{task}-data",
        prepared.digest[:36],
        prepared.source,
        {"train": prepared.train, "validation": prepared.validation, "test": prepared.test, "labels": prepared.labels},
    )


def log_threads(runs: RunTracking, run_id: str, threads: Threads) -> None:
    """The threads the run trained with (param `threads`) and why (tag `loraops.threads`): logged by the process
    that trains, which need not be the one that started the run."""
    runs.log_params(run_id, {"threads": str(threads.threads)})
    runs.set_tags(run_id, {"loraops.threads": threads.reason})


def now_ms() -> int:
    return int(time.time() * 1000)


class StepLog:
    """Buffers loss and lr per optimizer step (and each validation pass) and sends them to the run in batches."""

    def __init__(self, runs: RunTracking, run_id: str):
        self.runs, self.run_id = runs, run_id
        self.pending: list[MetricPoint] = []

    def __call__(self, step: int, loss: float, lr: float) -> None:
        self.pending += [MetricPoint("train_loss", loss, step, now_ms()), MetricPoint("lr", lr, step, now_ms())]
        if len(self.pending) >= 2 * FLUSH_EVERY:
            self.flush()

    def validation(self, step: int, metrics: Metrics) -> None:
        """One validation pass: val_loss, val_accuracy, ... at that step (the curves beside train_loss)."""
        self.pending += [MetricPoint(f"val_{name}", value, step, now_ms()) for name, value in metrics.items()]

    def flush(self) -> None:
        if self.pending:
            self.runs.log_points(self.run_id, self.pending)
            self.pending = []


def log_evaluation(runs: RunTracking, run_id: str, evaluation: Evaluation, trained: TrainedAdapter) -> None:
    """The evaluation's rows (base_, adapter_, merged_, production_<metric>), and with a validation split the
    validation of the weights training kept (best_val_<metric>, as a search's trials log it)."""
    kept = trained.best_validation.metrics if trained.best_validation else {}
    rows = {
        "base": evaluation.base,
        "adapter": evaluation.adapter,
        "merged": evaluation.merged,
        "production": evaluation.production or {},
    }
    metrics = {f"{row}_{name}": value for row, values in rows.items() for name, value in values.items()}
    metrics |= {f"best_val_{name}": value for name, value in kept.items()}
    runs.log_metrics(
        run_id, metrics | {"merge_relative_gap": evaluation.merge_gap, "gate_passed": float(evaluation.passed)}
    )
