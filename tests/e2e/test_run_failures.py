"""Failures inside a run, from `loraops run` as a user starts it: one line naming the step and the MLflow run, exit 1;
the MLflow run ends FAILED with the reason (KILLED when interrupted) and the Prefect flow run Failed (Crashed)."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from tasks import data_slice, tiny_base, write_task

LORAOPS = str(Path(sys.executable).parent / "loraops")
# `loraops run` with torchrun's command replaced by one that fails as a crashed worker would
TORCHRUN_FAILS = """
import sys
import pipelines.distributed
pipelines.distributed.torchrun_command = lambda *a, **k: [sys.executable, "-c", "raise SystemExit(3)"]
from pipelines.cli.main import main
sys.exit(main(["run", sys.argv[1]]))
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("base") / "bert")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAOPS_HOME", str(tmp_path / "home"))
    # PREFECT_HOME too: an earlier test in this process may have set it, and loraops would keep its state there
    for name in ("MLFLOW_TRACKING_URI", "LORAOPS_PROMOTION_TARGET", "PREFECT_API_URL", "PREFECT_HOME"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def runs(home: Path, task: str) -> list:
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"loraops-{task}")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def flow_runs(home: Path) -> list[tuple[str, str]]:
    """(state type, state message) of every flow run, from the local Prefect server's database."""
    with sqlite3.connect(home / "prefect" / "prefect.db") as db:
        return db.execute("select state_type, coalesce(state_name, '') from flow_run").fetchall()


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.startswith("loraops: ")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return lines[0]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "case, overrides, says, reason",
    [
        ("gate", {"gate": {"metric": "accuracy", "min_gain_over_base": 1.0}}, "gate blocked v1", "gate: accuracy gain"),
        (
            "merge-check",
            {"gate": {"metric": "accuracy", "merge_tolerance": 1e-12}},
            "evaluate failed: merged and unmerged",
            "evaluate: merged and unmerged logits",
        ),
        ("diverged", {"training__lr": 1e30}, "train failed: training diverged", "train: training diverged"),
    ],
)
def test_a_failed_run_says_which_step_and_which_mlflow_run_and_ends_both_runs_failed(
    base, home, tmp_path, case, overrides, says, reason
):
    path = write_task(tmp_path, case, base, data_slice(tmp_path, 120), training__max_steps=8, **overrides)
    done = run(LORAOPS, "run", str(path))
    line = one_line(done)
    assert done.returncode == 1 and says in line, line
    [mlflow_run] = runs(home, case)
    assert mlflow_run.info.run_id in line and mlflow_run.info.status == "FAILED"
    assert mlflow_run.data.tags["loraops.failure"].startswith(reason)
    assert [state for state, _ in flow_runs(home)] == ["FAILED"]
    registered = [
        int(v.version)
        for v in MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_model_versions(f"name = '{case}'")
    ]
    assert registered == ([1] if case == "gate" else [])  # a blocked version stays a candidate; else nothing
    assert not (home / "promoted" / case).exists()


def test_a_torchrun_failure_is_one_line_and_a_failed_run(base, home, tmp_path):
    path = write_task(tmp_path, "ddp", base, data_slice(tmp_path, 120), training__max_steps=4, training__nproc=2)
    done = run(sys.executable, "-c", TORCHRUN_FAILS, str(path))
    line = one_line(done)
    assert done.returncode == 1 and "train failed: torchrun exited with 3" in line, line
    [mlflow_run] = runs(home, "ddp")
    assert mlflow_run.info.status == "FAILED" and mlflow_run.info.run_id in line


@pytest.mark.parametrize("signal_number, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_run_ends_killed_and_its_flow_run_crashed(base, home, tmp_path, signal_number, code):
    path = write_task(tmp_path, "stopped", base, data_slice(tmp_path, 240), training__max_steps=100000)
    process = subprocess.Popen([LORAOPS, "run", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (home / "work" / "stopped").exists() or not runs(home, "stopped"):  # training under way
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(1)
    time.sleep(3)
    process.send_signal(signal_number)
    out, err = process.communicate(timeout=120)
    name = signal.Signals(signal_number).name
    assert process.returncode == code and err.strip().splitlines()[-1] == f"loraops: interrupted ({name})", err[-3000:]
    [mlflow_run] = runs(home, "stopped")
    assert (
        mlflow_run.info.status == "KILLED" and mlflow_run.data.tags["loraops.failure"] == f"train: interrupted ({name})"
    )
    assert [state for state, _ in flow_runs(home)] == ["CRASHED"]
    assert not os.listdir(home / "work" / "stopped") == []  # the checkpoint folder stays for a re-run to resume
