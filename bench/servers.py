"""moto's S3 server, a throwaway PostgreSQL cluster and an mlflow server on loopback, stopped on exit."""

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STACK_SH = Path(__file__).resolve().parents[1] / "infra" / "stack.sh"


def new_stack(**settings: str) -> tuple[Path, list[int], dict[str, str]]:
    """A folder for infra/stack.sh that PostgreSQL's own user can reach (not under a test's tmp_path), four free
    ports, and stack.sh's environment for them: this one without loraops's, MLflow's, Prefect's and AWS's
    variables, plus `settings`."""
    folder = Path(tempfile.mkdtemp(prefix="loraops-stack-"))
    folder.chmod(0o755)
    ports = [free_port() for _ in range(4)]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_", "LORAOPS_"))},
        "LORAOPS_STACK": str(folder),
        "LORAOPS_STACK_PORTS": " ".join(map(str, ports)),
        "LORAOPS_VENV": str(BIN.parent),
        **settings,
    }
    return folder, ports, env


def sourced(env_file: Path) -> dict[str, str]:
    """The variables a stack.env exports, as a shell that sources it would have them."""
    lines = [line.removeprefix("export ") for line in env_file.read_text().splitlines() if line.startswith("export ")]
    return dict(line.split("=", 1) for line in lines)


def user_env(env: dict[str, str], folder: Path, home: Path) -> dict[str, str]:
    """A user's shell on the stack: its stack.env sourced, none of stack.sh's settings, a home of its own."""
    return {
        **{k: v for k, v in env.items() if not k.startswith("LORAOPS_")},
        **sourced(folder / "stack.env"),
        "LORAOPS_HOME": str(home),
    }


@contextlib.contextmanager
def serving(command: list[str], url: str, log: Path):
    process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited: {log.read_text()[-2000:]}")
                time.sleep(0.3)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def use_s3(endpoint: str) -> None:
    """Point boto3 (and so loraops) at the bench's S3 server, as a user's AWS variables would."""
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )


@contextlib.contextmanager
def moto_server(home: Path):
    port = free_port()
    with serving(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}/moto-api/",
        home / "moto.log",
    ):
        yield f"http://127.0.0.1:{port}"


def postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))[-1:]), None)
    return Path(os.path.realpath(found)).parent if found else None


@contextlib.contextmanager
def postgres(root: Path | None = None):
    """A throwaway PostgreSQL cluster on a free port, under `root` (default a new folder in the temp dir, which
    PostgreSQL's own user can reach): yields the URI of its `mlflow` database."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed; apt-get install postgresql (its binaries are enough)")
    # initdb refuses to run as root: run the server as the `postgres` user in a folder it can reach.
    root = root or Path(tempfile.mkdtemp(prefix="loraops-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(root, "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(root / "data"), "-U", "loraops", "-A", "trust", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "start", "-o", options)
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "loraops", "mlflow")
        yield f"postgresql+psycopg2://loraops@127.0.0.1:{port}/mlflow"
    finally:
        stop = [*as_user, str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"]
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(home: Path, backend: str | None = None):
    """`mlflow server` on `backend` (default SQLite under `home`), artifacts in a folder under `home`."""
    port = free_port()
    folder = home / "mlflow-server"
    folder.mkdir(parents=True, exist_ok=True)
    with serving(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend or f"sqlite:///{folder / 'mlflow.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        f"http://127.0.0.1:{port}/health",
        home / "mlflow.log",
    ):
        yield f"http://127.0.0.1:{port}"
