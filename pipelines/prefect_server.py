"""Prefect's local server for one `loraops run` when no PREFECT_API_URL is set: the same uvicorn app Prefect would
start for itself, but one that dies with its parent.

Prefect's own temporary server outlives a `kill -9` of the process that started it (one orphan per crash, each
holding a port). Ours is started with PR_SET_PDEATHSIG, so the kernel kills it when loraops dies, however it
dies. Servers on one PREFECT_HOME start one at a time (a lock held until the health check answers), so runs
started together on a fresh home do not migrate the same SQLite database at once.
"""

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from registry.locks import exclusive

from .errors import PrefectServerError

STARTUP_TIMEOUT = 120


def die_with_parent() -> None:
    """In the child between fork and exec: ask the kernel for SIGKILL when the parent exits."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def prefect_environment(home: Path) -> dict[str, str]:
    """Prefect's settings for a run, where the user set none: its state under $LORAOPS_HOME, anonymous usage
    reporting off (this machine may have no network)."""
    defaults = {"PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return {name: os.environ.get(name, value) for name, value in defaults.items()}


def prefect_origin() -> str:
    spec = importlib.util.find_spec("prefect")
    if spec is None or spec.origin is None:
        raise PrefectServerError("prefect is not installed; run infra/setup.sh or set PREFECT_API_URL to a server")
    return spec.origin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_prefect_server(home: Path) -> Iterator[Callable[[], str | None]]:
    """Starts a server of our own in the background (nothing if PREFECT_API_URL is set) and yields `ready()`: it
    waits until the server answers and sets PREFECT_API_URL for the rest of the block. The block can check its
    input while the server starts. Prefect must not be imported before `ready()`: it reads PREFECT_API_URL once."""
    if os.environ.get("PREFECT_API_URL"):
        yield lambda: os.environ["PREFECT_API_URL"]
        return
    if "prefect" in sys.modules:
        # Prefect reads its settings when first imported, so a server set up now would not be seen. A caller that
        # imported Prefect already (a notebook, a test) gets Prefect's own temporary server, as before.
        yield lambda: None
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = home / "prefect" / "server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **prefect_environment(home),
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    prefect_dir = Path(prefect_origin()).parent
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(prefect_dir.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]
    starting = contextlib.ExitStack()  # the start lock, held until the server answers
    starting.enter_context(exclusive(home / "locks", f"prefect-server-start:{env.get('PREFECT_HOME', '')}"))
    with open(log, "ab") as out:
        # Its own session: a Ctrl-C at the terminal reaches loraops alone, which then reports the run as crashed
        # to this server before stopping it (a server killed first left the flow retrying a dead API).
        process = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )

    def ready() -> str:
        if "PREFECT_API_URL" not in os.environ:
            wait_healthy(url, process, log)
            starting.close()
            os.environ["PREFECT_API_URL"] = url
        return url

    try:
        yield ready
    finally:
        starting.close()
        if os.environ.get("PREFECT_API_URL") == url:
            drain_prefect_clients()
            del os.environ["PREFECT_API_URL"]
        stop(process)


def drain_prefect_clients(timeout: float = 10) -> None:
    """Send the logs and events Prefect still queues to the server before it stops; else Prefect's exit handlers
    keep retrying a server that is gone."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout, at_exit=False)


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    raise PrefectServerError(
        f"the local Prefect server did not start within {STARTUP_TIMEOUT}s "
        f"({tail[0][:200] if tail else 'no output'}; log: {log}); set PREFECT_API_URL to a "
        f"running server instead"
    )


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
