"""A crash leaves nothing behind: `loraops run` SIGKILLed at four points, then run again, ends as an uninterrupted
run would (one version, in production, its promoted copy complete) with no stray process, partial folder or
incomplete multipart upload; runs started together on a fresh home all succeed."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from servers import prefect_servers, servers_left
from tasks import data_slice, tiny_base, write_task

from registry import AdapterRegistry, RegistrySettings

BIN = Path(sys.executable).parent
CRASH = Path(__file__).parents[1] / "crash_at.py"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("crash-base") / "bert")


def leftovers(home: Path) -> list[str]:
    return sorted(
        str(p.relative_to(home))
        for pattern in (".*.partial-*", ".fetch-*", ".seed-*", ".upload-*")
        for p in home.rglob(pattern)
    )


def run(command: list[str], home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORAOPS_HOME": str(home), "PATH": f"{BIN}:{os.environ['PATH']}"}
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "LORAOPS_PROMOTION_TARGET"):
        env.pop(name, None)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("point", ["training", "merge", "registration", "promotion"])
def test_a_run_killed_at_any_point_leaves_nothing_behind_and_the_rerun_completes(point, base, s3_env, tmp_path):
    bucket = f"crash-{point}"
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    home = tmp_path / "home"
    task = write_task(
        tmp_path,
        "crash",
        base,
        data_slice(tmp_path),
        training__max_steps=30,
        gate={"metric": "accuracy", "min_gain_over_base": -1.0},  # the gate is not what is tested
        promotion={"mode": "merged", "target": f"s3://{bucket}/models"},
    )
    killed = run([sys.executable, str(CRASH), point, str(task)], home)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert servers_left(home) == []  # the kernel kills it with its parent
    if point == "promotion":
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads")  # what the crash left

    again = run([str(BIN / "loraops"), "run", str(task)], home)
    assert again.returncode == 0, again.stderr[-2000:]
    registry = AdapterRegistry(RegistrySettings.from_env(home=home, tracking_uri=None))
    assert [r.version for r in registry.list_versions("crash")] == [1]
    assert registry.aliases("crash")["production"] == 1
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert "models/crash/v1/merged/manifest.json" in keys and "models/crash/v1/merged/model.safetensors" in keys
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert leftovers(home) == [] and prefect_servers(home) == []


def test_three_first_runs_started_together_on_a_fresh_home_all_succeed(base, tmp_path):
    home = tmp_path / "home"
    tasks = [
        write_task(
            tmp_path,
            f"together-{i}",
            base,
            data_slice(tmp_path),
            training__max_steps=10,
            gate={"metric": "accuracy", "min_gain_over_base": -1.0},
        )
        for i in range(3)
    ]
    env = {**os.environ, "LORAOPS_HOME": str(home)}
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "LORAOPS_PROMOTION_TARGET"):
        env.pop(name, None)
    logs = [tmp_path / f"run-{i}.log" for i in range(3)]
    processes = [
        subprocess.Popen([str(BIN / "loraops"), "run", str(t)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        for t, log in zip(tasks, logs)
    ]
    outcomes = [(p.wait(timeout=600), log.read_text()) for p, log in zip(processes, logs)]
    assert [code for code, _ in outcomes] == [0, 0, 0], [err[-1500:] for _, err in outcomes]
    registry = AdapterRegistry(RegistrySettings.from_env(home=home, tracking_uri=None))
    assert sorted((r.task, r.version, tuple(r.aliases)) for r in registry.list_versions()) == [
        (f"together-{i}", 1, ("candidate", "production")) for i in range(3)
    ]
    assert prefect_servers(home) == []
