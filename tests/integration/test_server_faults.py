"""Servers that fail: a proxy between loraops and the S3 or MLflow server resets connections or stalls. Each ends
in one line naming the server and what to do, after bounded retries, with no alias moved."""

import time

import boto3
import pytest
from conftest import write_artifacts
from mlflow.exceptions import MlflowException
from servers import FaultyProxy, free_port

from pipelines.cli.main import main
from registry import AdapterRegistry, RegistryError, RegistrySettings
from registry.errors import StoreStalled, StoreUnavailable
from registry.faults import is_transient, retry_step

DATASET = "c" * 64
LOADER = "pipelines.pyfunc"  # the pyfunc loader module of every registered MLflow Model


@pytest.fixture
def proxy():
    made = []

    def make(upstream: str, mode: str, after: int = 0) -> FaultyProxy:
        made.append(FaultyProxy(upstream, mode, after))
        return made[-1]

    yield make
    for p in made:
        p.close()


def registered_with_bucket(task: str, tmp_path, monkeypatch) -> AdapterRegistry:
    """v1 of `task` (adapter and merged model) in an embedded registry, and an empty bucket of the task's name."""
    boto3.client("s3").create_bucket(Bucket=task)
    monkeypatch.setenv("LORAOPS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry = AdapterRegistry(RegistrySettings.from_env())
    folders = write_artifacts(tmp_path)
    base = registry.register_base(folders["base"], name="tiny/bert")
    registry.register(
        task, folders["adapter"], base, DATASET, {"accuracy": 0.8}, merged_dir=folders["merged"], loader_module=LOADER
    )
    return registry


def test_only_server_faults_count_as_transient():
    assert is_transient(StoreUnavailable("s3 down")) and is_transient(ConnectionResetError())
    assert is_transient(MlflowException("API request to http://x failed: Max retries exceeded with url"))
    assert not is_transient(RegistryError("task name 'A' is not a slug"))
    assert not is_transient(MlflowException.invalid_parameter_value("bad"))
    assert not is_transient(ValueError("r=0"))


def test_a_step_is_retried_for_a_refused_server_but_not_after_a_timeout_took_its_bound():
    refused = MlflowException("API request to http://x failed: Max retries exceeded with url (Connection refused)")
    stalled = MlflowException("API request to http://x failed: Max retries exceeded with url (Read timed out.)")
    assert retry_step(refused) and retry_step(StoreUnavailable("s3://b: the store answered 503"))
    assert not retry_step(stalled) and not retry_step(StoreStalled("s3://b did not answer"))


def test_s3_stopped_or_resetting_mid_upload_fails_in_one_line_and_moves_no_alias(
    s3_env, proxy, tmp_path, monkeypatch, capsys
):
    registry = registered_with_bucket("faults", tmp_path, monkeypatch)
    stopped = f"http://127.0.0.1:{free_port()}"  # nothing listens: the store is down
    flaky = proxy(s3_env["endpoint"], "reset", after=20_000)  # requests pass, bodies are cut
    for endpoint in (stopped, flaky.endpoint):
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        capsys.readouterr()
        assert main(["promote", "faults", "--version", "1", "--mode", "merged", "--target", "s3://faults/x"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot reach s3://faults/x" in err and "store is up" in err, err
        assert registry.aliases("faults") == {"candidate": 1}

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["endpoint"])  # the network is back: the same command completes
    assert main(["promote", "faults", "--version", "1", "--mode", "merged", "--target", "s3://faults/x"]) == 0
    assert registry.aliases("faults")["production"] == 1
    assert not boto3.client("s3").list_multipart_uploads(Bucket="faults").get("Uploads")


@pytest.mark.parametrize("after", [0, 20_000], ids=["stalled-from-the-start", "stalled-mid-upload"])
def test_a_stalled_s3_store_is_given_up_on_within_its_bound_in_one_line(
    after, s3_env, proxy, tmp_path, monkeypatch, capsys
):
    registry = registered_with_bucket("stalled", tmp_path, monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy(s3_env["endpoint"], "stall", after=after).endpoint)
    monkeypatch.setenv("LORAOPS_STORE_TIMEOUT", "8")
    capsys.readouterr()
    started = time.monotonic()
    assert main(["promote", "stalled", "--version", "1", "--mode", "merged", "--target", "s3://stalled/x"]) == 1
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "s3://stalled/x did not answer" in err and "LORAOPS_STORE_TIMEOUT" in err, err
    assert elapsed < 8 + 15, elapsed  # the bound, loosely: botocore's defaults took minutes
    assert registry.aliases("stalled") == {"candidate": 1}
    store = boto3.client("s3", endpoint_url=s3_env["endpoint"])  # past the proxy, which stalls this call too
    assert not store.list_objects_v2(Bucket="stalled", Prefix="x/stalled/v1/merged/manifest.json").get("Contents")


@pytest.mark.parametrize("mode", ["reset", "stall"])
def test_an_mlflow_server_that_resets_or_stalls_is_one_line_naming_it(
    mode, mlflow_server, proxy, tmp_path, monkeypatch, capsys
):
    faulty = proxy(mlflow_server["url"], mode, after=100)
    monkeypatch.setenv("LORAOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", faulty.endpoint)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")  # the user's own bounds win over loraops's defaults
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    started = time.monotonic()
    assert main(["adapters", "list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"loraops: error: the MLflow tracking server at {faulty.endpoint} did not answer"), err
    assert time.monotonic() - started < 60
