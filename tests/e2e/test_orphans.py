"""No command leaves a server running, however it is stopped: `loraops schedule` serving a task on its own local
Prefect server, stopped by Ctrl-C at its terminal (SIGINT to the process group), by SIGTERM, or by kill -9 of the
CLI alone. (`loraops run` stopped the same ways: test_run_failures.py and test_crashes.py.)"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import prefect_servers, servers_left
from tasks import data_slice, tiny_base, write_task

LORAOPS = str(Path(sys.executable).parent / "loraops")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("base") / "bert")


def started(process: subprocess.Popen, log: Path, says: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while says not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


@pytest.mark.parametrize(
    "how",
    [
        (signal.SIGINT, "group"),  # Ctrl-C at the terminal
        (signal.SIGTERM, "process"),  # a service manager stopping it
        (signal.SIGKILL, "process"),  # an OOM kill or kill -9: no handler runs
    ],
    ids=["ctrl-c", "sigterm", "kill-9"],
)
def test_a_served_schedule_stopped_any_way_leaves_no_server_running(base, tmp_path, how):
    signal_number, target = how
    home = tmp_path / "home"
    task = write_task(tmp_path, "nightly", base, data_slice(tmp_path, 60))
    env = {**os.environ, "LORAOPS_HOME": str(home)}
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME", "LORAOPS_PROMOTION_TARGET"):
        env.pop(name, None)
    log = tmp_path / "schedule.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [LORAOPS, "schedule", str(task), "--cron", "0 3 * * *"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell gives a foreground job
        )
    try:
        started(process, log, "serving it from this process")
        assert len(prefect_servers(home)) == 1  # the local server it serves on
        if target == "group":
            os.killpg(process.pid, signal_number)
        else:
            process.send_signal(signal_number)
        process.wait(timeout=10)  # stops within seconds
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
        assert servers_left(home) == []
    finally:
        if process.poll() is None:
            process.kill()
        for pid in prefect_servers(home):  # what a failed assertion left, not to leak into other tests
            os.kill(pid, signal.SIGKILL)
