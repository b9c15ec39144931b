"""The registry the way a team runs it: a real `mlflow server` (PostgreSQL when present) over HTTP,
artifacts and promotions on an S3-compatible server over HTTP, and the `loraops` CLI as a process."""

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from conftest import build, inputs, output, write_artifacts
from mlflow import MlflowClient
from servers import postgres_bin
from transformers import AutoModelForSequenceClassification

from lora_core import load_adapter
from registry import AdapterRegistry, IntegrityError, RegistrySettings, StoreError
from registry.aliases import DriftError

DATASET = "e" * 64
LOADER = "pipelines.pyfunc"  # the pyfunc loader module of every registered MLflow Model
LORAOPS = str(Path(sys.executable).parent / "loraops")


@pytest.fixture
def team(mlflow_server, s3_env, tmp_path, request):
    """A registry on the servers with its own task name, and the folders to register."""
    task = f"topics-{request.node.name.replace('_', '-').lower()[5:40].strip('-')}"
    settings = RegistrySettings.from_env(
        home=tmp_path / "home",
        tracking_uri=mlflow_server["url"],
        promotion_target=f"s3://promoted/team/{task}-root",
        actor="ci",
    )
    registry = AdapterRegistry(settings)
    folders = write_artifacts(tmp_path)
    base = registry.register_base(folders["base"], name="tiny/bert")
    v1 = registry.register(
        task, folders["adapter"], base, DATASET, {"accuracy": 0.8}, merged_dir=folders["merged"], loader_module=LOADER
    )
    s3 = boto3.client("s3")
    return registry, task, folders, v1, s3


def objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_round_trip_through_mlflow_server_and_s3_both_modes(team, mlflow_server):
    registry, task, folders, v1, s3 = team
    assert mlflow_server["backend"] == ("postgresql" if postgres_bin() else "sqlite")
    assert v1.artifacts["adapter"].startswith("mlflow-artifacts:")  # proxied by the server to S3
    stored = objects(s3, "mlflow-artifacts", "")
    assert any(key.endswith("adapter/adapter_model.safetensors") for key in stored)

    adapter = registry.promote(task, 1, "adapter", reason="first")
    merged = registry.promote(task, 1, "merged")
    assert adapter.uri == f"s3://promoted/team/{task}-root/{task}/v1/adapter"
    for promotion in (adapter, merged):
        prefix = promotion.uri.removeprefix("s3://promoted/") + "/"
        on_s3 = objects(s3, "promoted", prefix)
        manifest = json.loads(on_s3.pop("manifest.json"))
        assert manifest["version"] == 1 and manifest["mode"] == promotion.mode
        assert {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for name, data in on_s3.items()
        } == manifest["files"]
    record = registry.resolve(task, "production")
    assert record.version == 1 and record.promoted == {"adapter": adapter.uri, "merged": merged.uri}

    model = build("bert")
    load_adapter(model, registry.fetch(task, "production", "adapter"))
    merged_model = AutoModelForSequenceClassification.from_pretrained(registry.fetch(task, ":1", "merged")).eval()
    for loaded in (model, merged_model):
        assert (output(loaded, inputs("bert")) - folders["logits"]).abs().max() < 1e-5


def test_repeated_promotion_uploads_nothing(team):
    registry, task, _, _, s3 = team
    registry.promote(task, 1, "adapter")
    before = {
        o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket="promoted", Prefix=f"team/{task}")["Contents"]
    }
    again = registry.promote(task, 1, "adapter")
    assert again.uploaded == [] and again.bytes_uploaded == 0 and len(again.skipped) == 2
    after = {
        o["Key"]: o["LastModified"] for o in s3.list_objects_v2(Bucket="promoted", Prefix=f"team/{task}")["Contents"]
    }
    data_keys = [k for k in before if not k.endswith("manifest.json")]
    assert [before[k] for k in data_keys] == [after[k] for k in data_keys]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_fetch_refuses_a_damaged_object_on_s3(team, damage):
    registry, task, _, _, s3 = team
    promotion = registry.promote(task, 1, "adapter")
    key = promotion.uri.removeprefix("s3://promoted/") + "/adapter_model.safetensors"
    data = s3.get_object(Bucket="promoted", Key=key)["Body"].read()
    s3.put_object(
        Bucket="promoted", Key=key, Body=data[:-1] + bytes([data[-1] ^ 1]) if damage == "flip" else data[:-100]
    )
    fresh = AdapterRegistry(registry.settings.model_copy(update={"home": registry.settings.home.parent / "other"}))
    with pytest.raises(IntegrityError, match="altered" if damage == "flip" else "truncated"):
        fresh.fetch(task, "production")
    assert not (
        fresh.settings.cache.exists() and any(p for p in fresh.settings.cache.iterdir() if not p.name.startswith("."))
    )


def test_missing_bucket_and_wrong_credentials_move_no_alias(team, s3_auth_server, monkeypatch):
    registry, task, _, _, _ = team
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        registry.promote(task, 1, "adapter", target="s3://no-such-bucket/x")
    guarded = f"s3://{s3_auth_server['bucket']}/team"
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_auth_server["endpoint"])
    for key, secret in ((s3_auth_server["key"], "wrong-secret"), ("AKIAUNKNOWN", s3_auth_server["secret"])):
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        with pytest.raises(StoreError, match="credentials rejected") as error:
            registry.promote(task, 1, "adapter", target=guarded)
        assert secret not in str(error.value)
    assert registry.aliases(task) == {"candidate": 1}
    assert [e.action for e in registry.history(task)] == ["register"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_auth_server["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_auth_server["secret"])
    assert registry.promote(task, 1, "adapter", target=guarded).uri == f"{guarded}/{task}/v1/adapter"


def test_rollback_and_history_on_the_server(team):
    registry, task, folders, _, _ = team
    extra = write_artifacts(folders["base"].parent, seed=1)
    base = registry.find_base(registry.resolve(task, 1).base_fingerprint)
    registry.register(task, extra["adapter"], base, DATASET, {"accuracy": 0.9}, loader_module=LOADER)
    registry.promote(task, 1, "adapter")
    registry.promote(task, 2, "adapter", reason="better")
    registry.rollback(task, reason="latency regression")
    assert registry.resolve(task).version == 1
    moves = [(e.action, e.alias, e.from_version, e.to_version, e.reason) for e in registry.history(task)]
    assert moves[-2:] == [
        ("rollback", "production", 2, 1, "latency regression"),
        ("rollback", "previous-production", 1, None, "latency regression"),
    ]
    assert all(e.actor == "ci" for e in registry.history(task))


def test_credentials_never_reach_mlflow(team, s3_env):
    registry, task, _, record, _ = team
    registry.promote(task, 1, "adapter")
    client = MlflowClient(registry.settings.tracking_uri)
    version = client.get_model_version(task, "1")
    run = client.get_run(record.run_id)
    recorded = json.dumps([version.tags, run.data.tags, run.data.params, client.get_registered_model(task).tags])
    for secret in (s3_env["secret"], s3_env["key"]):
        assert secret not in recorded


def test_cli_reads_the_team_registry_and_fails_in_one_line(team, mlflow_server):
    registry, task, _, _, _ = team
    registry.promote(task, 1, "merged")
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server["url"], "LORAOPS_HOME": str(registry.settings.home)}
    listed = subprocess.run([LORAOPS, "adapters", "list", "--task", task], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and f"{task} " in listed.stdout and "production" in listed.stdout
    bad = subprocess.run(
        [LORAOPS, "promote", task, "--version", "1", "--target", "s3://no-such-bucket"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("loraops: error: bucket 'no-such-bucket' does not exist")
    assert registry.aliases(task)["production"] == 1


def test_large_files_go_up_in_parts_verified_by_the_stores_checksums(s3_env, tmp_path, monkeypatch):
    from registry.digests import DigestCache
    from registry.manifest import FileEntry
    from registry.s3_store import S3Store

    monkeypatch.setattr("registry.digests.MIN_PART", 5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024)
    (tmp_path / "big.safetensors").write_bytes(data)
    entry = FileEntry(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    store = S3Store("promoted", "multipart-test")
    sent, gets = [], []
    store.client.meta.events.register("before-call.s3.GetObject", lambda **kw: gets.append(kw))
    digest = store.upload(tmp_path / "big.safetensors", "big.safetensors", entry, sent.append)
    head = boto3.client("s3").head_object(
        Bucket="promoted", Key="multipart-test/big.safetensors", ChecksumMode="ENABLED"
    )
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5, 5 and 1 MiB
    parts = [data[i : i + 5 * 2**20] for i in range(0, len(data), 5 * 2**20)]
    composite = base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()).decode()
    assert head["ChecksumSHA256"].split("-")[0] == composite == digest.s3_checksum().split("-")[0]
    assert head["Metadata"]["sha256"] == entry.sha256 and sum(sent) == len(data)
    assert store.present("big.safetensors", entry, DigestCache(), tmp_path / "big.safetensors")
    assert gets == []  # verified and found by HEAD alone, no body read back

    # The local file changed after the manifest was made: refused while reading, nothing left on the store.
    (tmp_path / "big.safetensors").write_bytes(data[:-1] + b"x")
    with pytest.raises(IntegrityError, match="the local copy changed"):
        store.upload(tmp_path / "big.safetensors", "other.safetensors", entry)
    assert store.head("other.safetensors") is None
    assert boto3.client("s3").list_multipart_uploads(Bucket="promoted", Prefix="multipart-test/").get("Uploads") is None


def test_store_without_checksums_falls_back_to_reading_back(s3_env, tmp_path, monkeypatch, caplog):
    from servers import ChecksumStrippingProxy

    from registry.digests import DigestCache
    from registry.manifest import FileEntry
    from registry.s3_store import S3Store

    proxy = ChecksumStrippingProxy(s3_env["endpoint"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    monkeypatch.setattr(S3Store, "fallback_said", False)
    data = os.urandom(300_000)
    (tmp_path / "w.safetensors").write_bytes(data)
    entry = FileEntry(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    store = S3Store("promoted", "no-checksums")
    gets = []
    store.client.meta.events.register("before-call.s3.GetObject", lambda **kw: gets.append(kw))
    with caplog.at_level("WARNING", logger="loraops.store"):
        store.upload(tmp_path / "w.safetensors", "w.safetensors", entry)
        store.upload(tmp_path / "w.safetensors", "w2.safetensors", entry)
    assert store.head("w.safetensors").checksum is None and len(gets) == 2
    assert [r.message for r in caplog.records].count(
        "s3://promoted/no-checksums reports no SHA-256 checksums; verifying uploads by reading them back"
    ) == 1
    assert store.present("w.safetensors", entry, DigestCache())
    boto3.client("s3").put_object(Bucket="promoted", Key="no-checksums/w.safetensors", Body=data[:-1] + b"\0")
    assert not store.present("w.safetensors", entry, DigestCache())  # damaged: found by the read-back
    proxy.close()


def test_artifacts_already_on_the_same_s3_are_promoted_by_server_side_copy(s3_env, tmp_path, monkeypatch):
    """An MLflow whose artifact root is the bucket itself: promotion copies inside the store, verified by its SHA-256."""
    from registry.s3_store import S3Store

    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_env["endpoint"])
    settings = RegistrySettings.from_env(home=tmp_path / "home", promotion_target="s3://promoted/copied", actor="ci")
    registry = AdapterRegistry(settings)
    MlflowClient(registry.settings.tracking_uri).create_experiment(
        "loraops-direct", artifact_location="s3://mlflow-artifacts/direct"
    )
    folders = write_artifacts(tmp_path)
    base = registry.register_base(folders["base"], name="tiny/bert")
    record = registry.register(
        "direct",
        folders["adapter"],
        base,
        DATASET,
        {"accuracy": 0.8},
        merged_dir=folders["merged"],
        loader_module=LOADER,
    )
    assert record.artifacts["merged"].startswith("s3://mlflow-artifacts/direct/")
    calls = []
    monkeypatch.setattr(S3Store, "upload", lambda *a, **k: calls.append(a))  # nothing may be sent from here
    promotion = registry.promote("direct", record.version, "merged")
    assert calls == [] and promotion.bytes_uploaded == 0 and len(promotion.uploaded) > 0
    s3 = boto3.client("s3")
    for name in promotion.uploaded:
        head = s3.head_object(Bucket="promoted", Key=f"copied/direct/v1/merged/{name}", ChecksumMode="ENABLED")
        body = s3.get_object(Bucket="promoted", Key=f"copied/direct/v1/merged/{name}")["Body"].read()
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    merged = AutoModelForSequenceClassification.from_pretrained(registry.fetch("direct", "production", "merged")).eval()
    assert (output(merged, inputs("bert")) - folders["logits"]).abs().max() < 1e-5
    again = registry.promote("direct", record.version, "merged")
    assert again.uploaded == [] and len(again.skipped) == len(promotion.uploaded)


def test_promotion_aborts_multipart_uploads_a_killed_promotion_left(team):
    registry, task, _, _, s3 = team
    prefix = registry.settings.promotion_target.removeprefix("s3://promoted/") + f"/{task}/v1/merged/"
    left = s3.create_multipart_upload(Bucket="promoted", Key=prefix + "model.safetensors")  # as a kill -9 leaves it
    s3.upload_part(
        Bucket="promoted", Key=prefix + "model.safetensors", UploadId=left["UploadId"], PartNumber=1, Body=b"x" * 1024
    )
    elsewhere = s3.create_multipart_upload(Bucket="promoted", Key="someone-else/file")
    registry.promote(task, 1, "merged")
    uploads = s3.list_multipart_uploads(Bucket="promoted").get("Uploads", [])
    assert [u["UploadId"] for u in uploads] == [elsewhere["UploadId"]]  # only ours, only under this version's prefix
    s3.abort_multipart_upload(Bucket="promoted", Key="someone-else/file", UploadId=elsewhere["UploadId"])


def test_an_alias_moved_outside_loraops_is_shown_and_blocks_promote_and_rollback_until_settled(team, mlflow_server):
    registry, task, folders, _, _ = team
    extra = write_artifacts(folders["base"].parent, seed=1)
    registry.register(
        task,
        extra["adapter"],
        registry.find_base(registry.resolve(task, 1).base_fingerprint),
        DATASET,
        {"accuracy": 0.9},
        loader_module=LOADER,
    )
    registry.promote(task, 1, "adapter")
    MlflowClient(mlflow_server["url"]).set_registered_model_alias(task, "production", "2")  # someone in the UI
    assert [str(d) for d in registry.drift(task)] == [
        f"{task} production is v2 in the registry but v1 in loraops's history"
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server["url"], "LORAOPS_HOME": str(registry.settings.home)}
    listed = subprocess.run([LORAOPS, "adapters", "list", "--task", task], env=env, capture_output=True, text=True)
    assert f"drift: {task} production is v2 in the registry but v1 in loraops's history" in listed.stdout
    events = len(registry.history(task))
    for attempt in (lambda: registry.promote(task, 2, "adapter"), lambda: registry.rollback(task)):
        with pytest.raises(DriftError, match="--drift accept .* or --drift revert"):
            attempt()
    refused = subprocess.run([LORAOPS, "rollback", task], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "moved outside loraops" in refused.stderr
    assert len(registry.history(task)) == events and registry.aliases(task)["production"] == 2

    registry.promote(task, 2, "adapter", drift="accept")  # the registry was right: v2 is production
    accepted = registry.history(task)[-1]
    assert (accepted.action, accepted.from_version, accepted.to_version) == ("external", 1, 2)
    assert accepted.reason.startswith("outside loraops") and registry.drift(task) == []

    MlflowClient(mlflow_server["url"]).delete_registered_model_alias(task, "production")
    registry.promote(task, 1, "adapter", drift="revert")  # the history was right: v2 back first, then v1 replaces it
    assert [(e.action, e.alias, e.from_version, e.to_version) for e in registry.history(task)[-3:]] == [
        ("revert", "production", None, 2),
        ("promote", "previous-production", None, 2),
        ("promote", "production", 2, 1),
    ]
    assert registry.aliases(task) == {"production": 1, "previous-production": 2, "candidate": 2}
    assert registry.drift(task) == []


def test_listing_pages_through_the_servers_tokens(team, mlflow_server):
    """MLflow's REST API pages with its own tokens: a registry with pages of one result still sees every task."""
    registry, task, folders, v1, s3 = team
    client = MlflowClient(mlflow_server["url"])
    source = client.get_model_version(task, "1")
    for suffix in ("a", "b"):  # two more tasks, copies of the first version (the raw client, to keep it quick)
        client.create_registered_model(f"{task}-{suffix}", tags={"loraops.kind": "task"})
        client.create_model_version(f"{task}-{suffix}", source.source, run_id=source.run_id, tags=source.tags)
        client.set_registered_model_alias(f"{task}-{suffix}", "production", "1")
    one_by_one = AdapterRegistry(registry.settings, page_size=1)
    listed = one_by_one.list_versions(task_prefix=task)
    assert [(r.task, r.version) for r in listed] == [(task, 1), (f"{task}-a", 1), (f"{task}-b", 1)]
    assert [r.task for r in one_by_one.list_versions(task_prefix=task, alias="production")] == [
        f"{task}-a",
        f"{task}-b",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server["url"]}
    shown = subprocess.run(
        [LORAOPS, "adapters", "list", "--task-prefix", task, "--alias", "candidate", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and [r["task"] for r in json.loads(shown.stdout)] == [task]
