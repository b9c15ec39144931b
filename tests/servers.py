"""Real servers for integration tests, started once per session.

- S3: moto's standalone server over HTTP (and a second one with IAM authentication on, where wrong keys are rejected).
- MLflow: `mlflow server` over HTTP with its artifacts proxied to that S3, on PostgreSQL when
  the machine has it (.ci/run installs it from Debian), else on SQLite.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bench.servers import free_port, postgres, postgres_bin

BIN = Path(sys.executable).parent


def prefect_servers(home: Path) -> list[int]:
    """Pids of Prefect API servers (ours or Prefect's own temporary one) started for LORAOPS_HOME `home`: their
    command runs Prefect's app and their environment names its PREFECT_HOME."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if (
                b"prefect.server.api.server:create_app" in (proc / "cmdline").read_bytes()
                and f"PREFECT_HOME={home / 'prefect'}".encode() in (proc / "environ").read_bytes()
            ):
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def servers_left(home: Path, seconds: float = 10) -> list[int]:
    """prefect_servers(home) once they are gone or `seconds` passed (a server stops after the command that
    started it, or, killed with it, when the kernel or its watchdog ends it)."""
    deadline = time.monotonic() + seconds
    while (found := prefect_servers(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    stop(process)
    raise RuntimeError(f"{url} not up after {timeout}s:\n{log.read_text()[-3000:]}")


def start(command: list[str], url: str, log: Path, env: dict | None = None) -> subprocess.Popen:
    process = subprocess.Popen(
        command,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    wait_for(url, process, log)
    return process


def stop(process: subprocess.Popen) -> None:
    """Stop the server and everything it forked (mlflow server starts uvicorn and job runners)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGKILL)


def start_moto(folder: Path, auth: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    # With auth on, the first three requests (create user, policy, key) pass unauthenticated; all others are checked.
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "3"} if auth else {}
    process = start(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        f"{endpoint}/moto-api/",
        folder / "moto.log",
        env,
    )
    return process, endpoint


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """{endpoint, key, secret}: moto's S3 server over HTTP with the buckets MLflow and promotion use.

    moto answers presigned URLs (which MLflow's server hands its clients) only with IAM auth off,
    so this one accepts any key; `s3_auth_server` is the one that rejects wrong keys.
    """
    import boto3

    process, endpoint = start_moto(tmp_path_factory.mktemp("moto"), auth=False)
    server = {"endpoint": endpoint, "key": "AKIALORAOPSTESTKEY01", "secret": "loraops-test-secret-never-logged"}
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=server["key"],
        aws_secret_access_key=server["secret"],
    )
    for bucket in ("mlflow-artifacts", "promoted"):
        s3.create_bucket(Bucket=bucket)
    yield server
    stop(process)


@pytest.fixture(scope="session")
def s3_auth_server(tmp_path_factory):
    """{endpoint, key, secret, bucket}: moto with IAM auth on; only the IAM user's key made here is accepted."""
    import boto3

    process, endpoint = start_moto(tmp_path_factory.mktemp("moto-auth"), auth=True)
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="loraops-ci")
    iam.put_user_policy(
        UserName="loraops-ci",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="loraops-ci")["AccessKey"]
    server = {"endpoint": endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"], "bucket": "guarded"}
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=server["key"],
        aws_secret_access_key=server["secret"],
    ).create_bucket(Bucket=server["bucket"])
    yield server
    stop(process)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The standard AWS variables pointing at the test S3 server, as a user would set them."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server["secret"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


@pytest.fixture(scope="session")
def postgres_uri():
    """A throwaway PostgreSQL cluster on a free port, or None where PostgreSQL is not installed."""
    if postgres_bin() is None:
        yield None
        return
    with postgres() as uri:
        yield uri


@pytest.fixture(scope="session")
def mlflow_server(s3_server, postgres_uri, tmp_path_factory):
    """{url, backend}: `mlflow server` on PostgreSQL (or SQLite), artifacts proxied to s3://mlflow-artifacts."""
    folder = tmp_path_factory.mktemp("mlflow")
    backend = postgres_uri or f"sqlite:///{folder / 'mlflow.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "MLFLOW_S3_ENDPOINT_URL": s3_server["endpoint"],
        "AWS_ACCESS_KEY_ID": s3_server["key"],
        "AWS_SECRET_ACCESS_KEY": s3_server["secret"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    process = start(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            "s3://mlflow-artifacts",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        f"{url}/health",
        folder / "server.log",
        env,
    )
    yield {"url": url, "backend": backend.split(":")[0].split("+")[0]}
    stop(process)


class ChecksumStrippingProxy:
    """An S3-compatible endpoint that knows no additional checksums: forwards to `upstream`, drops x-amz-checksum-*.

    Stands for the stores (older MinIO, Ceph RGW versions, ...) whose HEAD reports no SHA-256.
    """

    def __init__(self, upstream: str):
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host, port = upstream.removeprefix("http://").split(":")

        class Handler(BaseHTTPRequestHandler):
            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream_conn = http.client.HTTPConnection(host, int(port), timeout=60)
                headers = {k: v for k, v in self.headers.items() if not k.lower().startswith("x-amz-checksum")}
                upstream_conn.request(self.command, self.path, body=body, headers=headers)
                response = upstream_conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if not key.lower().startswith("x-amz-checksum") and key.lower() not in (
                        "transfer-encoding",
                        "connection",
                    ):
                        self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


class FaultyProxy:
    """A TCP proxy in front of `upstream` (http://host:port) that fails the way networks do.

    reset: forwards until `after` bytes came from the client on one connection, then resets it (RST).
    stall: forwards until `after` bytes came from the client on one connection, then neither forwards nor answers
    again (after=0: accepts connections but never answers any).
    """

    def __init__(self, upstream: str, mode: str, after: int = 0):
        import struct
        import threading

        host, port = upstream.removeprefix("http://").split(":")
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list = []

        def reset(conn):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

        def pipe(source, sink, budget):
            sent = 0
            try:
                while data := source.recv(65536):
                    sent += len(data)
                    if budget is not None and sent > budget:
                        if mode == "stall":
                            threading.Event().wait()  # hold both ends open, silent: the caller's timeout ends it
                        reset(source)
                        reset(sink)
                        return
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for s in (source, sink):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        def serve():
            while True:
                try:
                    client, _ = self.listener.accept()
                except OSError:
                    return
                self.open.append(client)
                if mode == "stall" and not after:
                    continue  # never answered: the caller's timeout must end it
                upstream_conn = socket.create_connection((host, int(port)))
                threading.Thread(target=pipe, args=(client, upstream_conn, after), daemon=True).start()
                threading.Thread(target=pipe, args=(upstream_conn, client, None), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()

    def close(self):
        self.listener.close()
        for conn in self.open:
            conn.close()
