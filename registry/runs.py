"""MLflow runs of a task, in its experiment `loraops-<task>`: what a training run records, and how it ends.

The one place outside the model registry that talks to MLflow's tracking API, so callers need no MlflowClient.
Values are cut to MLflow's limits here (a long parameter or failure reason must not fail the run).
"""

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from .errors import DiskFull
from .free_space import SpaceNeed, check_space, disk_writes, size_of
from .s3 import is_s3_uri
from .settings import RegistrySettings

MAX_PARAM = 6000  # MLflow's limit on a parameter value
MAX_REASON = 5000  # below MLflow's 8000 on a tag value
MAX_DIGEST = 36  # MLflow's limit on a dataset digest
FAILURE_TAG = "loraops.failure"
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


class MetricPoint(NamedTuple):
    """One value of a metric at an optimizer step (the per-step loss and learning rate, buffered by the caller)."""

    name: str
    value: float
    step: int
    timestamp_ms: int


class RunTracking:
    """Start, record and end MLflow runs on the registry's tracking server."""

    def __init__(self, client: MlflowClient, settings: RegistrySettings):
        self.client, self.settings = client, settings

    def experiment(self, name: str) -> str:
        """The id of experiment `name`, created (with artifacts under $LORAOPS_HOME when embedded) if missing."""
        found = self.client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        location = (self.settings.home / "mlartifacts" / name).as_uri() if self.settings.embedded else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently
            created = self.client.get_experiment_by_name(name)
            if created is None:
                raise
            return created.experiment_id

    def start(self, task: str, run_name: str, tags: Mapping[str, str]) -> str:
        """A new run in experiment `loraops-<task>`; returns its id."""
        run = self.client.create_run(self.experiment(f"loraops-{task}"), run_name=run_name, tags=dict(tags))
        return run.info.run_id

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, params=[Param(key, value[:MAX_PARAM]) for key, value in params.items()])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, profile: Mapping[str, object]) -> None:
        """The training data as the run's dataset input (context "training"); `digest` is cut to MLflow's 36."""
        dataset = Dataset(
            name=name,
            digest=digest[:MAX_DIGEST],
            source_type="s3" if is_s3_uri(source) else "local",
            source=json.dumps({"uri": source}),
            profile=json.dumps(dict(profile)),
        )
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self.log_points(run_id, [MetricPoint(key, value, step, now) for key, value in metrics.items()])

    def log_points(self, run_id: str, points: Sequence[MetricPoint]) -> None:
        self.client.log_batch(run_id, metrics=[Metric(p.name, p.value, p.timestamp_ms, p.step) for p in points])

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str) -> None:
        """Embedded MLflow copies the files under $LORAOPS_HOME/mlartifacts: the free space is checked first, and
        a copy the disk could not hold is removed (one DiskFull line)."""
        if not self.settings.embedded:
            self.client.log_artifacts(run_id, str(folder), artifact_path)
            return
        artifacts = self.settings.home / "mlartifacts"
        check_space([SpaceNeed(artifacts, size_of(Path(folder)), f"the run's {artifact_path} artifacts")])
        try:
            with disk_writes(artifacts, f"the run's {artifact_path} artifacts"):
                self.client.log_artifacts(run_id, str(folder), artifact_path)
        except DiskFull:
            root = urlparse(self.client.get_run(run_id).info.artifact_uri)
            if root.scheme == "file":
                shutil.rmtree(Path(unquote(root.path)) / artifact_path, ignore_errors=True)
            raise

    def end(self, run_id: str, status: RunStatus = "FINISHED", reason: str | None = None) -> None:
        """End the run; a reason (why it failed) is kept as the run's tag `loraops.failure`."""
        if reason is not None:
            self.client.set_tag(run_id, FAILURE_TAG, reason[:MAX_REASON])
        self.client.set_terminated(run_id, status)

    def status(self, run_id: str) -> str:
        """RUNNING, FINISHED, FAILED or KILLED."""
        return self.client.get_run(run_id).info.status
