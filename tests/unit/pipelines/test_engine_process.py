"""The engine process's lifetime, with a plain shell command in the engine's place (a parent and two children, as
vLLM's server and its workers): a SIGKILL of loraops leaves no process of the engine's group, an engine that exits
at start is reported with its last error line, stop() ends the whole group."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from pipelines.engine_watchdog import group_alive
from pipelines.errors import EngineFailed
from pipelines.vllm_engine import RunningEngine

FAMILY = ["bash", "-c", "sleep 300 & sleep 300 & wait"]


def wait_gone(pgid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not group_alive(pgid)


def test_a_sigkilled_owner_leaves_no_engine_process(tmp_path):
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import time
                from pathlib import Path
                from pipelines.vllm_engine import RunningEngine
                engine = RunningEngine({FAMILY!r}, Path({str(tmp_path / "engine.log")!r}))
                print(engine.pid, flush=True)
                time.sleep(300)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    pgid = int(owner.stdout.readline())
    time.sleep(0.5)  # the children are running
    assert group_alive(pgid)
    owner.kill()
    owner.wait()
    assert wait_gone(pgid)


def test_stop_ends_the_engine_and_its_children(tmp_path):
    engine = RunningEngine(FAMILY, tmp_path / "engine.log")
    time.sleep(0.5)
    engine.stop(timeout=5)
    assert wait_gone(engine.pid, 1)
    assert engine.watchdog.poll() is not None


def test_an_engine_that_exits_at_start_is_reported_with_its_last_error_line(tmp_path):
    script = "echo starting; echo 'ValueError: Unsupported CPU attention configuration: head_dim=16'; echo bye; exit 3"
    engine = RunningEngine(["bash", "-c", script], tmp_path / "engine.log")
    with pytest.raises(EngineFailed, match=r"exited at start \(code 3\): ValueError: Unsupported CPU attention"):
        engine.wait_healthy("http://127.0.0.1:9", timeout=30)
    engine.stop()
    assert not group_alive(engine.pid)
    assert os.getpgid(os.getpid()) != engine.pid  # it ran in a group of its own
