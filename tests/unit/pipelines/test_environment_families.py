"""Bad environment, by family, on every command that reads it: MLFLOW_TRACKING_URI with a scheme MLflow has no store
for, LORAOPS_HOME that is a file, lies under one or is read-only, AWS_ENDPOINT_URL that is no address, an S3 endpoint
that does not answer. Each member is one line naming the variable to fix, exit 2 (1 for a store that does not
answer), no traceback, nothing written."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli.main import main
from registry.errors import EnvironmentSettingError, StoreUnavailable
from registry.settings import RegistrySettings
from registry.stores import open_store

LORAOPS = str(Path(sys.executable).parent / "loraops")
VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "LORAOPS_PROMOTION_TARGET",
    "PREFECT_API_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)
COMMANDS = [
    ["adapters", "list"],
    ["adapters", "show", "sections"],
    ["adapters", "fetch", "sections@production"],
    ["adapters", "history", "sections"],
    ["promote", "sections", "--version", "1"],
    ["rollback", "sections"],
    ["run", "task.yaml"],
    ["schedule", "--list"],
    ["predict", "sections", "a text"],
]
TRACKING = [
    "foo://bar",
    "ftp://host/mlruns",
    "s3://bucket/mlruns",
    "redis://user:secret@cache:6379",
    "http://",
    "https:///mlflow",
]
ENDPOINTS = ["localhost:9000", "ftp://store:21", "http://", "s3.amazonaws.com"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LORAOPS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("loraops: error: ") and "Traceback" not in err, err
    return err


def home_file(tmp_path: Path) -> Path:
    (tmp_path / "home-file").write_text("not a folder")
    return tmp_path / "home-file"


def under_a_file(tmp_path: Path) -> Path:
    return home_file(tmp_path) / "home"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("uri", TRACKING)
def test_a_tracking_uri_without_an_mlflow_store_is_one_line_on_every_command(uri, command, env, tmp_path, capsys):
    env.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(command) == 2
    err = one_line(capsys)
    assert "MLFLOW_TRACKING_URI=" in err and "secret" not in err
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("make, says", [(home_file, "is a file, not a folder"), (under_a_file, "which is a file")])
def test_a_home_that_is_no_folder_is_one_line_on_every_command(make, says, command, env, tmp_path, capsys):
    env.setenv("LORAOPS_HOME", str(make(tmp_path)))
    assert main(command) == 2
    err = one_line(capsys)
    assert "LORAOPS_HOME=" in err and says in err
    assert (tmp_path / "home-file").read_text() == "not a folder"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_endpoint_that_is_no_address_is_one_line_on_every_command(endpoint, command, env, tmp_path, capsys):
    env.setenv("AWS_ENDPOINT_URL", endpoint)
    assert main(command) == 2
    assert "AWS_ENDPOINT_URL=" in one_line(capsys)


def test_settings_accept_every_scheme_mlflow_has_a_store_for(env, tmp_path):
    for uri in ("sqlite:///x.db", "http://mlflow:5000", "https://mlflow.example", "postgresql+psycopg2://u@db/m"):
        env.setenv("MLFLOW_TRACKING_URI", uri)
        assert RegistrySettings.from_env().tracking_uri == uri
    env.setenv("LORAOPS_HOME", str(tmp_path / "not" / "yet" / "made"))
    assert RegistrySettings.from_env().home == tmp_path / "not" / "yet" / "made"  # made on first use


def test_an_s3_store_that_does_not_answer_names_the_endpoint_variable(env):
    env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    env.setenv("AWS_ACCESS_KEY_ID", "test")
    env.setenv("AWS_SECRET_ACCESS_KEY", "test")
    RegistrySettings.from_env()  # a well-formed address passes the settings check
    with pytest.raises(StoreUnavailable) as error:
        open_store("s3://bucket/prefix").check()
    message = str(error.value)
    assert "\n" not in message and "AWS_ENDPOINT_URL" in message and "s3://bucket" in message


def read_only_mounts() -> bool:
    """True when this process may bind-mount read-only in a mount namespace of its own (root in most containers)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


def loraops(command: list[str], env: dict[str, str], read_only: Path | None = None) -> subprocess.CompletedProcess:
    args = [LORAOPS, *command]
    if read_only is not None:  # LORAOPS_HOME on a read-only file system (root writes through chmod)
        script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
        args = ["unshare", "-m", "sh", "-c", script, str(read_only), *args]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "variable, value, command",
    [
        ("MLFLOW_TRACKING_URI", "foo://bar", ["adapters", "list"]),
        ("LORAOPS_HOME", "home-file", ["adapters", "fetch", "sections@production"]),
        ("AWS_ENDPOINT_URL", "localhost:9000", ["promote", "sections", "--version", "1"]),
    ],
)
def test_from_a_shell_each_is_one_line_exit_2_and_no_traceback(variable, value, command, tmp_path):
    home_file(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES} | {"LORAOPS_HOME": str(tmp_path / "home")}
    done = loraops(command, {**env, variable: str(tmp_path / value) if value == "home-file" else value})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and f"{variable}=" in done.stderr


@pytest.mark.skipif(not read_only_mounts(), reason="needs a mount namespace (unshare -m) for a read-only folder")
@pytest.mark.parametrize("command", [["adapters", "list"], ["adapters", "fetch", "sections@production"]])
def test_a_read_only_home_is_one_line_exit_2(command, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES} | {"LORAOPS_HOME": str(home)}
    done = loraops(command, env, read_only=home)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "LORAOPS_HOME=" in done.stderr and "read-only" in done.stderr
    assert not any(home.iterdir())


def test_the_check_refuses_what_it_names(env, tmp_path):
    env.setenv("LORAOPS_HOME", str(home_file(tmp_path)))
    with pytest.raises(EnvironmentSettingError, match="LORAOPS_HOME="):
        RegistrySettings.from_env()


def test_vllm_args_with_an_unbalanced_quote_are_one_line_naming_the_variable(env):
    from pipelines.errors import SettingError
    from pipelines.vllm_engine import EngineSettings

    env.setenv("LORAOPS_VLLM_ARGS", "--max-model-len 512 --served-model-name 'base")
    with pytest.raises(SettingError, match="LORAOPS_VLLM_ARGS=.*No closing quotation; quote it as a shell would"):
        EngineSettings.from_env()
    env.setenv("LORAOPS_VLLM_ARGS", "--max-model-len 512 --served-model-name 'the base'")
    assert EngineSettings.from_env().extra_args == ["--max-model-len", "512", "--served-model-name", "the base"]
