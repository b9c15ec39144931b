"""Failures inside a run, from `loraops run` as a user starts it: one line naming the step and the MLflow run, exit 1;
the MLflow run ends FAILED with the reason (KILLED when interrupted) and the Prefect flow run Failed (Crashed)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from servers import servers_left
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
def test_an_interrupted_run_stops_at_once_ends_killed_and_the_rerun_resumes(base, home, tmp_path, signal_number, code):
    """Sent to the whole process group, as a terminal's Ctrl-C is: the local Prefect server, in its own session,
    outlives loraops long enough to record the flow run Crashed, then stops with it."""
    path = write_task(
        tmp_path, "stopped", base, data_slice(tmp_path, 240), training__max_steps=300, training__checkpoint_every=5
    )
    process = subprocess.Popen(
        [LORAOPS, "run", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while not list((home / "work" / "stopped").glob("*/checkpoint/state.json")):  # training under way
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    sent = time.monotonic()
    os.killpg(process.pid, signal_number)
    out, err = process.communicate(timeout=120)
    stopped_after = time.monotonic() - sent
    name = signal.Signals(signal_number).name
    [mlflow_run] = runs(home, "stopped")
    line = err.strip().splitlines()[-1]
    assert process.returncode == code and "Traceback" not in err, err[-3000:]
    assert line.startswith(f"loraops: interrupted ({name}): stopped's MLflow run {mlflow_run.info.run_id} ended KILLED")
    assert "resumes training from its last checkpoint" in line
    assert stopped_after < 10, stopped_after  # the bound the README states (it was 169 s with a traceback)
    assert (
        mlflow_run.info.status == "KILLED" and mlflow_run.data.tags["loraops.failure"] == f"train: interrupted ({name})"
    )
    assert [state for state, _ in flow_runs(home)] == ["CRASHED"]
    assert servers_left(home) == []
    checkpoint = json.loads(next((home / "work" / "stopped").glob("*/checkpoint/state.json")).read_text())

    again = run(LORAOPS, "run", str(path))
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = next(r for r in runs(home, "stopped") if r.info.run_id != mlflow_run.info.run_id)
    steps = [
        m.step
        for m in MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_metric_history(rerun.info.run_id, "train_loss")
    ]
    assert min(steps) == len(checkpoint["losses"]) + 1 and max(steps) == 300  # from the checkpoint, not step 1
