"""Every error class a user can meet maps to one line and its documented exit code: 2 for bad input, 1 for a failure
inside a run or of a server, 130/143 for an interrupt; anything else is a bug and keeps its traceback."""

import errno
import http.server
import importlib
import inspect
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import lora_core.errors
import pipelines.errors
import registry.errors

cli = importlib.import_module("pipelines.cli.main")  # the module (the package exports its main function)

LORAOPS = str(Path(sys.executable).parent / "loraops")
FAILURES = {
    pipelines.errors.RunError,
    registry.errors.ServerUnavailable,
    registry.errors.StoreError,
    registry.errors.IntegrityError,
    registry.errors.PromotionFailed,  # some tasks of promote --all-passing failed: a failure, not bad input
}


def error_classes():
    for module in (pipelines.errors, registry.errors, lora_core.errors):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and cls.__module__ == module.__name__:
                yield cls


def make(cls: type[BaseException]) -> BaseException:
    if cls is pipelines.errors.StepFailed:
        return cls("t", "train", "run-1", "boom")
    if cls is pipelines.errors.GateBlocked:
        return cls("t", 2, "run-1", ["accuracy gain over the base is +0.0000, below the required +0.0100"])
    return cls("what went wrong; how to fix it")


@pytest.mark.parametrize("cls", list(error_classes()), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_each_error_class_is_one_line_with_its_exit_code(cls, monkeypatch, capsys):
    error = make(cls)
    monkeypatch.setattr(cli, "run", lambda args: (_ for _ in ()).throw(error))
    code = cli.main(["adapters", "list"])
    err = capsys.readouterr().err
    assert code == (1 if any(issubclass(cls, f) for f in FAILURES) else 2)
    assert err.count("\n") == 1 and err.startswith("loraops: error: ") and str(error).splitlines()[0] in err


@pytest.mark.parametrize(
    "error, code, line",
    [
        (pipelines.errors.Interrupted("SIGTERM"), 143, "loraops: interrupted (SIGTERM)\n"),
        (KeyboardInterrupt(), 130, "loraops: interrupted (SIGINT)\n"),
        (
            pipelines.errors.Interrupted("SIGINT", "t", "run-1"),
            130,
            "loraops: interrupted (SIGINT): t's MLflow run run-1 ended KILLED; the same command again resumes "
            "training from its last checkpoint\n",
        ),
    ],
)
def test_an_interrupt_is_one_line_and_the_shell_convention_exit_code(error, code, line, monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", lambda args: (_ for _ in ()).throw(error))
    assert cli.main(["adapters", "list"]) == code and capsys.readouterr().err == line


@pytest.mark.parametrize(
    "error, code, says",
    [
        (PermissionError(errno.EACCES, "Permission denied", "/srv/out"), 2, "/srv/out: permission denied: choose"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "a/b"), 2, "a/b: no such file or directory"),
        (OSError(errno.ENOSPC, "No space left on device", "/srv/out/x"), 1, "/srv/out/x: no space left on the disk"),
        (OSError(errno.ENOSPC, "No space left on device"), 1, "a file: no space left on the disk: free some"),
    ],
)
def test_a_file_that_cannot_be_read_or_written_is_one_line(error, code, says, monkeypatch, capsys):
    monkeypatch.setattr(cli, "run", lambda args: (_ for _ in ()).throw(error))
    assert cli.main(["adapters", "list"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"loraops: error: {says}")


def test_an_os_error_without_a_file_is_not_taken_for_one(monkeypatch):
    monkeypatch.setattr(cli, "run", lambda args: (_ for _ in ()).throw(ConnectionResetError(104, "reset")))
    with pytest.raises(ConnectionResetError):
        cli.main(["adapters", "list"])


def test_an_out_folder_under_a_file_is_one_line_exit_2(tmp_path, capsys):
    from test_rank_commands import adapter

    adapter(tmp_path / "a")
    (tmp_path / "file").write_text("")
    assert cli.main(["analyze", str(tmp_path / "a"), "--out", str(tmp_path / "file" / "report")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "file/report: not a directory: check the path" in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.setattr(cli, "run", lambda args: (_ for _ in ()).throw(AttributeError("a bug")))
    with pytest.raises(AttributeError):
        cli.main(["adapters", "list"])


def test_step_failed_names_the_step_and_the_mlflow_run():
    error = pipelines.errors.StepFailed("sections", "evaluate", "0a1b", "merged and unmerged logits differ")
    assert (
        str(error) == "sections: evaluate failed: merged and unmerged logits differ; the MLflow run 0a1b ended FAILED"
    )


def test_help_and_version_answer_from_a_fresh_process():
    for flag in ("--help", "--version"):
        done = subprocess.run([LORAOPS, flag], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith("usage: loraops" if flag == "--help" else "loraops ")


class Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every request as MLflow's basic-auth app does: 401 without a login, 403 for an account without the
    permission (plain-text bodies)."""

    said = {401: b"You are not authenticated. Please see the MLflow docs on authentication.", 403: b"Permission denied"}

    def answer(self):
        if "Authorization" not in self.headers:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            body = self.said[401]
        else:
            self.send_response(403)
            body = self.said[403]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_DELETE = answer

    def log_message(self, *args):
        pass


class GatewayRefusing(Refusing):
    """A gateway in front of MLflow that refuses with JSON bodies of its own (no MLflow error_code), which MLflow's
    client reads as an INTERNAL_ERROR without the status."""

    said = {401: b'{"message": "Unauthorized"}', 403: b'{"message": "Permission denied"}'}


@pytest.fixture(params=[Refusing, GatewayRefusing])
def refusing_server(request):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize(
    "login, code, says",
    [
        ({}, 2, "refused the login (401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
        (
            {"MLFLOW_TRACKING_USERNAME": "ci", "MLFLOW_TRACKING_PASSWORD": "pw"},
            2,
            "refused ci (403: Permission denied); have an admin grant the permission",
        ),
    ],
)
def test_a_server_that_refuses_the_login_or_the_permission_is_one_line(
    login, code, says, refusing_server, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", refusing_server)
    monkeypatch.setenv("LORAOPS_HOME", str(tmp_path / "home"))
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in login.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["adapters", "list"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err and refusing_server in err, err


def test_a_flow_step_refused_by_a_gateway_is_not_retried(refusing_server, monkeypatch):
    """MLflow's client reads a gateway's JSON 401 as an INTERNAL_ERROR, which alone would be retried."""
    from mlflow.exceptions import RestException

    from registry.faults import is_transient, retry_step

    monkeypatch.setenv("MLFLOW_TRACKING_URI", refusing_server)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    refused = RestException({"message": "Unauthorized"})
    assert is_transient(refused) and not retry_step(refused)
    assert retry_step(RestException({"error_code": "INTERNAL_ERROR", "message": "database is locked"}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # a gateway's JSON error, then no answer at all
    assert retry_step(RestException({"error_code": None, "message": "upstream reset"}))


@pytest.mark.parametrize(
    "body, says", [("Permission denied", "(403: Permission denied)"), ("", "(403: no reason given)")]
)
def test_a_403_from_the_artifact_proxy_is_one_line_too(body, says, monkeypatch, capsys):
    """Artifacts through the server's proxy are read with requests, whose HTTPError is not an MlflowException."""
    import requests

    answer = requests.Response()
    answer.status_code, answer._content = 403, body.encode()
    error = requests.HTTPError("403 Client Error: FORBIDDEN", response=answer)
    monkeypatch.setattr(cli, "run", lambda args: (_ for _ in ()).throw(error))
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ci")
    import mlflow.exceptions  # noqa: F401  (the CLI reads server faults once MLflow is loaded)

    assert cli.main(["adapters", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"refused ci {says}" in err, err
