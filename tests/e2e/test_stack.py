"""The team stack for real: `infra/stack.sh up` (PostgreSQL, S3 server, MLflow server, Prefect server, a process work
pool and a worker), a task scheduled on the pool, a run of that deployment triggered as the cron would, run by the
worker through train -> register -> promote; then `stack.sh down` leaves no process behind."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import boto3
import httpx
import pytest
from servers import postgres_bin
from tasks import data_slice, tiny_base, write_task

from bench.servers import STACK_SH, new_stack, sourced, user_env
from pipelines.follow import max_overlap

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.skipif(
    postgres_bin() is None or shutil.which("runuser") is None and os.geteuid() == 0,
    reason="the stack needs PostgreSQL (CI installs it)",
)


def stack(command: str, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(STACK_SH), command], env=env, capture_output=True, text=True, timeout=timeout)


def pids_under(folder: Path) -> list[int]:
    """Processes whose command line or environment names `folder` (what the stack started)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if str(folder).encode() in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_scheduled_task_runs_on_the_worker_and_down_leaves_nothing(tmp_path):
    folder, _, env = new_stack()
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stderr[-3000:]
        assert stack("up", env).returncode == 0  # idempotent: nothing started twice
        status = stack("status", env).stdout
        assert all(f"{s} " in status and "running" in status for s in ("postgres", "s3", "mlflow", "prefect", "worker"))
        user = {**env, **sourced(folder / "stack.env"), "LORAOPS_HOME": str(tmp_path / "home")}

        base = tiny_base(tmp_path / "bert")
        task = write_task(
            tmp_path,
            "stacked",
            base,
            data_slice(tmp_path),
            training__max_steps=20,
            gate={"metric": "accuracy", "min_gain_over_base": -1.0},
        )
        scheduled = subprocess.run(
            [str(BIN / "loraops"), "schedule", str(task), "--cron", "0 3 * * *"],
            env=user,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert scheduled.returncode == 0 and "work pool loraops-cpu" in scheduled.stdout, scheduled.stderr[-2000:]
        listed = subprocess.run([str(BIN / "loraops"), "schedule", "--list"], env=user, capture_output=True, text=True)
        assert "stacked" in listed.stdout and "0 3 * * *" in listed.stdout and "loraops-cpu" in listed.stdout

        triggered = subprocess.run(
            [str(BIN / "prefect"), "deployment", "run", "train_adapter/stacked"],
            env=user,
            capture_output=True,
            text=True,
            timeout=60,
        )  # what the cron does at 03:00
        assert triggered.returncode == 0, triggered.stderr
        deadline = time.monotonic() + 420
        from mlflow import MlflowClient

        client = MlflowClient(user["MLFLOW_TRACKING_URI"])
        while time.monotonic() < deadline:
            try:
                if "production" in client.get_registered_model("stacked").aliases:
                    break
            except Exception:  # noqa: BLE001 - not registered yet
                pass
            time.sleep(3)
        else:
            pytest.fail(
                "the worker did not register and promote in time: "
                + (folder / "logs" / "worker.log").read_text()[-3000:]
            )

        s3 = boto3.client(
            "s3",
            endpoint_url=user["AWS_ENDPOINT_URL"],
            aws_access_key_id=user["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=user["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="loraops-promoted")["Contents"]}
        assert "prod/stacked/v1/adapter/manifest.json" in keys
        predicted = subprocess.run(
            [str(BIN / "loraops"), "predict", "stacked@production", "a chess engine"],
            env=user,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert predicted.returncode == 0 and "stacked v1" in predicted.stdout, predicted.stderr[-2000:]
        removed = subprocess.run(
            [str(BIN / "loraops"), "schedule", "--remove", "stacked"],
            env=user,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert removed.returncode == 0, removed.stderr
    finally:
        down = stack("down", env)
    assert down.returncode == 0, down.stderr
    time.sleep(1)
    assert pids_under(folder) == []
    assert "stopped" in stack("status", env).stdout and stack("down", env).returncode == 0  # down twice is harmless
    shutil.rmtree(folder, ignore_errors=True)


def test_stack_and_schedule_bad_input_is_one_line_and_leaves_nothing_running(tmp_path):
    import socket

    folder, ports, env = new_stack()
    assert "nothing is running" in stack("down", env).stdout  # down on a stack that is not up
    with socket.create_server(("127.0.0.1", ports[1])):  # something else holds the S3 port
        up = stack("up", env)
    assert up.returncode == 1 and up.stderr.strip() == (
        f"stack: error: port {ports[1]} for s3 is taken by another process; free it or set LORAOPS_STACK_PORTS"
    )
    time.sleep(1)
    assert pids_under(folder) == []  # PostgreSQL, started first, was stopped again
    (folder / "pids" / "mlflow.pid").write_text("999999")
    assert "mlflow    stale pid file" in stack("status", env).stdout
    shutil.rmtree(folder, ignore_errors=True)

    dead = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{ports[3]}/api", "LORAOPS_HOME": str(tmp_path / "home")}
    data_slice(tmp_path).rename(tmp_path / "data.jsonl")
    tiny_base(tmp_path / "bert")
    task = write_task(tmp_path, "nightly", tmp_path / "bert", tmp_path / "data.jsonl")
    for cron, code, says in (
        ("every night", 2, "--cron 'every night' is not a cron expression"),
        ("0 3 * * *", 1, f"the Prefect server at http://127.0.0.1:{ports[3]}/api does not answer"),
    ):
        done = subprocess.run(
            [str(BIN / "loraops"), "schedule", str(task), "--cron", cron],
            env=dead,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == code and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr


def loraops(*args: str, env: dict, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "loraops"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_six_tasks_fan_out_over_two_workers_and_the_pool_limit_bounds_them(tmp_path):
    """`loraops run FOLDER` with the stack's server: bad input is one line and submits nothing; six tiny tasks
    become six flow runs on a pool of two workers (room for four) limited to two at once; all complete and
    register, and never more than two worked at a moment (their task runs' start and end times on Prefect's API)."""
    # each worker takes two: the pool's limit is what binds
    folder, _, env = new_stack(LORAOPS_WORKERS="2", LORAOPS_CONCURRENT_RUNS="2", LORAOPS_POOL_LIMIT="2")
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stderr[-3000:]
        status = stack("status", env).stdout
        assert "worker    running" in status and "worker-2  running" in status, status
        user = user_env(env, folder, tmp_path / "home")
        base, data = tiny_base(tmp_path / "bert"), data_slice(tmp_path)
        tasks = tmp_path / "tasks"
        tasks.mkdir()
        gate = {"metric": "accuracy", "min_gain_over_base": -1.0}
        for i in range(6):
            write_task(tasks, f"fan-{i}", base, data, training__max_steps=6, training__checkpoint_every=100, gate=gate)
        (tmp_path / "again").mkdir()
        twin = write_task(tmp_path / "again", "fan-0", base, data)
        subprocess.run(
            [str(BIN / "prefect"), "work-pool", "create", "idle", "--type", "process"],
            env={**user, "PREFECT_HOME": str(tmp_path / "prefect")},
            capture_output=True,
        )
        for extra, args, says in (
            ({}, [str(tasks), str(twin)], "both name task 'fan-0'"),
            ({"LORAOPS_WORK_POOL": "nowhere"}, [str(tasks)], "work pool 'nowhere' does not exist"),
            ({"LORAOPS_WORK_POOL": "idle"}, [str(tasks)], "work pool 'idle' has no worker online"),
            ({"LORAOPS_SHARED_ROOTS": str(tasks)}, [str(tasks)], f"data.path {data} is on this machine only"),
        ):
            refused = loraops("run", *args, env={**user, **extra})
            assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and says in refused.stderr, (
                refused.stderr[-2000:]
            )

        def flow_runs() -> list[dict]:
            found = httpx.post(f"{user['PREFECT_API_URL']}/flow_runs/filter", json={}, timeout=30)
            return found.raise_for_status().json()

        assert flow_runs() == []  # bad input submitted nothing
        done = loraops("run", str(tasks), env=user, timeout=1200)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        assert "6 of 6 task(s) completed on work pool loraops-cpu" in done.stdout, done.stdout[-3000:]
        assert all(f"fan-{i}: Completed" in done.stdout for i in range(6)), done.stdout[-3000:]
        runs = flow_runs()
        assert len(runs) == 6 and {r["state_type"] for r in runs} == {"COMPLETED"}, runs

        def working(run: dict) -> tuple[datetime, datetime]:  # from its first task's start to its last task's end
            found = httpx.post(
                f"{user['PREFECT_API_URL']}/task_runs/filter",
                json={"flow_runs": {"id": {"any_": [run["id"]]}}},
                timeout=30,
            )
            tasks = [t for t in found.raise_for_status().json() if t["start_time"] and t["end_time"]]
            return (
                min(datetime.fromisoformat(t["start_time"]) for t in tasks),
                max(datetime.fromisoformat(t["end_time"]) for t in tasks),
            )

        # Two at once, never three (room for four on the workers): the pool's slots bind the work of each run, which
        # Prefect's own pool limit alone does not when both workers poll at once (a flow run may start, then wait)
        spans = [working(r) for r in runs]
        assert max_overlap(spans) == 2, sorted(spans)

        from mlflow import MlflowClient

        client = MlflowClient(user["MLFLOW_TRACKING_URI"])
        assert {v.name for v in client.search_model_versions("name LIKE 'fan-%'")} == {f"fan-{i}" for i in range(6)}
    finally:
        down = stack("down", env)
    assert down.returncode == 0, down.stderr
    time.sleep(1)
    assert pids_under(folder) == []
    shutil.rmtree(folder, ignore_errors=True)


def test_tune_fans_trials_out_over_the_pool_and_ships_the_best(tmp_path):
    """`loraops tune` with the stack's server: four trials of a tiny search become four flow runs on a pool of two
    workers limited to two, two training at once (the study in the stack's PostgreSQL, each trial a child MLflow run
    of the task's run); the best trial ships in a fifth flow run, whose version records the search."""
    folder, _, env = new_stack(LORAOPS_WORKERS="2", LORAOPS_POOL_LIMIT="2")
    try:
        up = stack("up", env)
        assert up.returncode == 0, up.stderr[-3000:]
        user = user_env(env, folder, tmp_path / "home")
        assert user["LORAOPS_STUDY_STORAGE"].startswith("postgresql")
        base, data = tiny_base(tmp_path / "bert"), data_slice(tmp_path, rows=160)
        training = {"max_steps": 12, "batch_size": 16, "max_length": 32, "device": "cpu", "checkpoint_every": 100}
        task = write_task(
            tmp_path,
            "tuned",
            base,
            data,
            data__validation_fraction=0.2,
            training={**training, "search": {"trials": 4, "space": {"lr": [5e-3, 5e-2]}}},
            gate={"metric": "accuracy", "min_gain_over_base": -1.0},
        )
        # A study in SQLite under this shell's home is a file the pool's workers do not see: refused, nothing submitted
        elsewhere = Path(tempfile.mkdtemp(prefix="loraops-study-")) / "studies.db"
        local_study = {**user, "LORAOPS_STUDY_STORAGE": f"sqlite:///{elsewhere}", "LORAOPS_SHARED_ROOTS": str(tmp_path)}
        refused = loraops("tune", str(task), env=local_study)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-2000:]
        assert "is on this machine only" in refused.stderr and "LORAOPS_STUDY_STORAGE" in refused.stderr

        done = loraops("tune", str(task), env=user, timeout=1200)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        assert "trials on work pool loraops-cpu, 2 at once" in done.stdout, done.stdout[-3000:]
        assert "4 trial(s) run now, 4 in all" in done.stdout and "tuned: Completed" in done.stdout, done.stdout[-3000:]
        found = httpx.post(f"{user['PREFECT_API_URL']}/flow_runs/filter", json={}, timeout=30).raise_for_status()
        runs = found.json()
        trials = [r for r in runs if "trial" in r["tags"]]
        ships = [r for r in runs if "trial" not in r["tags"]]
        assert len(trials) == 4 and len(ships) == 1, [(r["name"], r["tags"]) for r in runs]
        assert {r["state_type"] for r in runs} == {"COMPLETED"}, [(r["name"], r["state_name"]) for r in runs]

        def taken(run: dict) -> tuple[datetime, datetime]:  # from the moment a worker took it to its end
            states = httpx.get(
                f"{user['PREFECT_API_URL']}/flow_run_states/", params={"flow_run_id": run["id"]}, timeout=30
            ).raise_for_status()
            pending = min(datetime.fromisoformat(s["timestamp"]) for s in states.json() if s["type"] == "PENDING")
            return pending, datetime.fromisoformat(run["end_time"])

        # In parallel, and never past the pool's limit. A trial's work counts from the moment a worker took it: its
        # RUNNING span alone (2-3 s of training after a process start of about 8 s on 2 busy cores) can
        # end before the other worker's process has started, and then reads one at a time though both worked at once.
        spans = [taken(r) for r in trials]
        assert max_overlap(spans) == 2, sorted(spans)
        assert min(s for s, _ in spans) < max(e for _, e in spans) and ships[0]["start_time"] > max(
            r["end_time"] for r in trials
        )

        from mlflow import MlflowClient

        client = MlflowClient(user["MLFLOW_TRACKING_URI"])
        (version,) = client.search_model_versions("name = 'tuned'")
        assert version.tags["loraops.search.trials"] == "4"
        children = client.search_runs(
            [client.get_run(version.run_id).info.experiment_id], f"tags.mlflow.parentRunId = '{version.run_id}'"
        )
        assert len(children) == 4 and {c.data.tags["loraops.trial"] for c in children} == {"0", "1", "2", "3"}
        assert client.get_run(version.run_id).data.params["threads"]  # logged by the worker that shipped it
    finally:
        down = stack("down", env)
    assert down.returncode == 0, down.stderr
    time.sleep(1)
    assert pids_under(folder) == []
    shutil.rmtree(folder, ignore_errors=True)
