"""Kills a serving engine's process group when the `loraops serve` that started it is gone, however it went.

    python -m pipelines.engine_watchdog OWNER_PID ENGINE_PGID

PR_SET_PDEATHSIG reaches the engine's first process only; vLLM's workers are its children. This process (a session
of its own, so a Ctrl-C at the terminal does not stop it first) waits for the owner to exit, then sends SIGKILL to
the engine's whole group. It exits by itself once the group is gone. Imports the standard library only.
"""

import os
import signal
import sys
import time

POLL_SECONDS = 0.5


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def watch(owner: int, pgid: int) -> None:
    while group_alive(pgid):
        if os.getppid() != owner or not alive(owner):
            os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(POLL_SECONDS)


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
