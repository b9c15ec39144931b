"""RunTracking on the embedded default: each method, and what MLflow holds afterwards."""

import json

import pytest
from mlflow import MlflowClient

from registry import AdapterRegistry, MetricPoint, RegistrySettings, RunTracking


@pytest.fixture
def registry(embedded_home):
    return AdapterRegistry(RegistrySettings.from_env(home=embedded_home, tracking_uri=None, actor="tester"))


@pytest.fixture
def runs(registry) -> RunTracking:
    return registry.runs


@pytest.fixture
def client(registry) -> MlflowClient:
    return MlflowClient(registry.settings.tracking_uri)


@pytest.fixture
def run_id(runs) -> str:
    return runs.start("topics", "train topics", {"loraops.task": "topics"})


def test_start_creates_a_running_run_in_the_task_experiment_under_home(runs, client, registry):
    run_id = runs.start("topics", "train topics", {"loraops.task": "topics", "loraops.code.version": "git:abc"})
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "loraops-topics"
    assert experiment.artifact_location == (registry.settings.home / "mlartifacts" / "loraops-topics").as_uri()
    assert run.info.run_name == "train topics" and run.info.status == "RUNNING"
    assert run.data.tags["loraops.task"] == "topics" and run.data.tags["loraops.code.version"] == "git:abc"
    assert client.get_run(runs.start("topics", "again", {})).info.experiment_id == run.info.experiment_id


def test_log_params_cuts_values_to_mlflows_limit_and_sends_more_than_one_batch(runs, client, run_id):
    params = {f"p{i}": str(i) for i in range(150)} | {"long": "x" * 7000}  # MLflow takes 100 per batch
    runs.log_params(run_id, params)
    logged = client.get_run(run_id).data.params
    assert len(logged) == 151 and logged["p149"] == "149" and logged["long"] == "x" * 6000


@pytest.mark.parametrize("source, kind", [("s3://bucket/data/train.jsonl", "s3"), ("/data/train.jsonl", "local")])
def test_log_dataset_is_a_training_input_with_its_source_kind(runs, client, run_id, source, kind):
    runs.log_dataset(run_id, "topics-data", "f" * 64, source, {"train": 40, "test": 10, "labels": ["a", "b"]})
    (found,) = client.get_run(run_id).inputs.dataset_inputs
    assert found.dataset.name == "topics-data" and found.dataset.digest == "f" * 36
    assert found.dataset.source_type == kind and json.loads(found.dataset.source) == {"uri": source}
    assert json.loads(found.dataset.profile) == {"train": 40, "test": 10, "labels": ["a", "b"]}
    assert [(t.key, t.value) for t in found.tags] == [("mlflow.data.context", "training")]


def test_log_metrics_at_a_step(runs, client, run_id):
    runs.log_metrics(run_id, {"adapter_accuracy": 0.75, "gate_passed": 1.0})
    runs.log_metrics(run_id, {"adapter_accuracy": 0.8}, step=3)
    assert client.get_run(run_id).data.metrics == {"adapter_accuracy": 0.8, "gate_passed": 1.0}
    history = client.get_metric_history(run_id, "adapter_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.75), (3, 0.8)]


def test_log_points_keeps_each_step_and_timestamp(runs, client, run_id):
    points = [MetricPoint("train_loss", 2.0 - step / 10, step, 1_700_000_000_000 + step) for step in range(5)]
    runs.log_points(run_id, points + [MetricPoint("lr", 1e-3, 4, 1_700_000_000_004)])
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted((m.step, m.value, m.timestamp) for m in history) == [
        (p.step, p.value, p.timestamp_ms) for p in points
    ]
    assert client.get_run(run_id).data.metrics["lr"] == 1e-3


def test_log_artifacts_under_a_path(runs, client, run_id, tmp_path):
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "summary.json").write_text("{}")
    runs.log_artifacts(run_id, tmp_path / "analysis", "analysis")
    assert [f.path for f in client.list_artifacts(run_id, "analysis")] == ["analysis/summary.json"]


def test_end_finished_sets_no_failure_tag(runs, client, run_id):
    runs.end(run_id)
    run = client.get_run(run_id)
    assert runs.status(run_id) == run.info.status == "FINISHED" and "loraops.failure" not in run.data.tags
    assert run.info.end_time is not None


@pytest.mark.parametrize("status", ["FAILED", "KILLED"])
def test_end_with_a_reason_tags_it_cut_to_5000_chars(runs, client, run_id, status):
    runs.end(run_id, status, reason="training diverged: " + "x" * 6000)
    run = client.get_run(run_id)
    assert run.info.status == status
    assert run.data.tags["loraops.failure"].startswith("training diverged: ")
    assert len(run.data.tags["loraops.failure"]) == 5000


def test_status_of_a_running_run(runs, run_id):
    assert runs.status(run_id) == "RUNNING"
