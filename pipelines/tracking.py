"""The MLflow run of one training flow: parameters, dataset input, per-step loss and lr, metrics."""

import json
import time

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param

from registry import AdapterRegistry, BaseRecord
from registry.code_version import code_version

from .spec import TaskSpec

FLUSH_EVERY = 50


def flatten(values: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return flat


def start_run(registry: AdapterRegistry, spec: TaskSpec, prepared: dict, base: BaseRecord) -> str:
    client = registry.client
    run = client.create_run(registry.experiment(f"loraops-{spec.task}"), run_name=f"train {spec.task}", tags={
        "loraops.task": spec.task, "loraops.base.fingerprint": base.fingerprint,
        "loraops.dataset.fingerprint": prepared["fingerprint"], "loraops.code.version": code_version()})
    params = flatten(spec.model_dump(mode="json", exclude={"source"}))
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
    dataset = Dataset(name=f"{spec.task}-data", digest=prepared["fingerprint"][:36],
                      source_type="s3" if prepared["source"].startswith("s3://") else "local",
                      source=json.dumps({"uri": prepared["source"]}),
                      profile=json.dumps({"train": prepared["train"], "validation": prepared.get("validation", 0),
                                         "test": prepared["test"], "labels": prepared["labels"]}))
    client.log_inputs(run.info.run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
    return run.info.run_id


class StepLog:
    """Buffers loss and lr per optimizer step (and each validation pass) and sends them to the run in batches."""

    def __init__(self, registry: AdapterRegistry, run_id: str):
        self.client, self.run_id, self.pending = registry.client, run_id, []

    def __call__(self, step: int, loss: float, lr: float) -> None:
        now = int(time.time() * 1000)
        self.pending += [Metric("train_loss", loss, now, step), Metric("lr", lr, now, step)]
        if len(self.pending) >= 2 * FLUSH_EVERY:
            self.flush()

    def validation(self, step: int, metrics: dict[str, float]) -> None:
        """One validation pass: val_loss, val_accuracy, ... at that step (the curves beside train_loss)."""
        now = int(time.time() * 1000)
        self.pending += [Metric(f"val_{name}", value, now, step) for name, value in metrics.items()]

    def flush(self) -> None:
        if self.pending:
            self.client.log_batch(self.run_id, metrics=self.pending)
            self.pending = []


def log_metrics(registry: AdapterRegistry, run_id: str, evaluation: dict) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(f"{row}_{name}", value, now, 0) for row in ("base", "adapter", "merged", "production")
               for name, value in evaluation.get(row, {}).items()]
    metrics.append(Metric("merge_relative_gap", evaluation["merge_gap"], now, 0))
    metrics.append(Metric("gate_passed", float(evaluation["passed"]), now, 0))
    registry.client.log_batch(run_id, metrics=metrics)
