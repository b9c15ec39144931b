"""`loraops promote --all-passing` the way a team runs it: a real `mlflow server` over HTTP, promotions on moto's S3
server over HTTP. Passed candidates are promoted, the others skipped with a word; one task's bytes altered on their
way to the store fail that task alone (the store's checksums catch it), its aliases where they were."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from conftest import write_artifacts

import registry.s3 as registry_s3
from registry import AdapterRegistry, RegistrySettings

DATASET = "a" * 64
LOADER = "pipelines.pyfunc"
LORAOPS = str(Path(sys.executable).parent / "loraops")
GATES = {"a": "passed", "b": "blocked", "c": "passed", "d": "passed"}


@pytest.fixture
def fleet(mlflow_server, s3_env, tmp_path, request):
    """Four tasks <prefix>-a..d with a candidate each (b's gate blocked), d already in production; their merged
    folders carry an 11 MiB file so that it goes up in parts."""
    prefix = "fl-" + hashlib.sha256(request.node.name.encode()).hexdigest()[:8]
    settings = RegistrySettings.from_env(
        home=tmp_path / "home", tracking_uri=mlflow_server["url"], promotion_target=f"s3://promoted/{prefix}"
    )
    registry = AdapterRegistry(settings)
    folders = write_artifacts(tmp_path)
    (folders["merged"] / "extra.safetensors").write_bytes(os.urandom(11 * 2**20))
    base = registry.register_base(folders["base"], name="tiny/bert")
    for suffix, gate in GATES.items():
        registry.register(
            f"{prefix}-{suffix}",
            folders["adapter"],
            base,
            DATASET,
            {"accuracy": 0.8},
            merged_dir=folders["merged"],
            loader_module=LOADER,
            gate=gate,
        )
    registry.promote(f"{prefix}-d", 1, "adapter")
    return registry, prefix


def manifests(prefix: str) -> set[str]:
    listed = boto3.client("s3").list_objects_v2(Bucket="promoted", Prefix=f"{prefix}/").get("Contents", [])
    return {o["Key"].removeprefix(f"{prefix}/") for o in listed if o["Key"].endswith("manifest.json")}


def test_cli_promotes_every_passed_candidate_and_skips_the_others(fleet, mlflow_server):
    registry, prefix = fleet
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server["url"], "LORAOPS_HOME": str(registry.settings.home)}
    done = subprocess.run(
        [LORAOPS, "promote", "--all-passing", "--task-prefix", prefix, "--target", f"s3://promoted/{prefix}"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split()[:3] for line in done.stdout.splitlines()[2:6]]
    assert rows == [
        [f"{prefix}-a", "v1", "promoted"],
        [f"{prefix}-b", "v1", "skipped"],
        [f"{prefix}-c", "v1", "promoted"],
        [f"{prefix}-d", "v1", "skipped"],
    ]
    assert "gate blocked" in done.stdout and "already production" in done.stdout
    assert done.stdout.splitlines()[-1] == "2 promoted, 2 skipped, 0 failed"
    assert manifests(prefix) == {f"{prefix}-{t}/v1/adapter/manifest.json" for t in "acd"}
    assert {t: registry.aliases(f"{prefix}-{t}").get("production") for t in GATES} == {
        "a": 1,
        "b": None,
        "c": 1,
        "d": 1,
    }


def test_a_store_that_alters_one_tasks_parts_fails_that_task_alone(fleet, s3_env, monkeypatch):
    registry, prefix = fleet
    monkeypatch.setattr("registry.digests.MIN_PART", 5 * 2**20)  # the 11 MiB file: three parts
    s3_client = registry_s3.s3_client

    def altering(connections: int):
        """A client whose parts of task c lose a bit on the way, after their checksums were computed."""

        def flip(request, **kwargs):
            if f"/{prefix}-c/" in request.url and "partNumber=" in request.url:
                with request.body.getbuffer() as body:  # the part's bytes as they are about to be sent
                    body[0] ^= 1

        client = s3_client(connections)
        client.meta.events.register("before-send.s3.UploadPart", flip)
        return client

    monkeypatch.setattr(registry_s3, "CLIENTS", {})
    monkeypatch.setattr(registry_s3, "s3_client", altering)
    outcomes = registry.promote_passing(task_prefix=prefix, mode="merged", jobs=3)
    assert [(o.task, o.result) for o in outcomes] == [
        (f"{prefix}-a", "promoted"),
        (f"{prefix}-b", "skipped"),
        (f"{prefix}-c", "failed"),
        (f"{prefix}-d", "skipped"),
    ]
    failed = outcomes[2].detail
    assert failed.startswith(f"s3://promoted/{prefix}/{prefix}-c/v1/merged/extra.safetensors: the store does not hold")
    assert failed.endswith("the store altered it, promotion stopped")
    assert manifests(prefix) == {f"{prefix}-a/v1/merged/manifest.json", f"{prefix}-d/v1/adapter/manifest.json"}
    assert registry.aliases(f"{prefix}-c") == {"candidate": 1}  # not moved
    assert registry.aliases(f"{prefix}-a")["production"] == 1
    assert "merged" not in registry.resolve(f"{prefix}-c", 1).promoted
