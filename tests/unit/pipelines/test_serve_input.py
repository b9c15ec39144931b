"""`loraops serve` refuses bad input in one line, exit 2, before any engine starts: no adapter in production on the
base, a base that is not registered, a classifier-only base, a --max-lora-rank below an adapter's rank, a port in
use, an engine that is not installed. (The engine itself runs in tests/integration/test_vllm_serving.py.)"""

import importlib
import socket

import pytest
from conftest import build
from llama_serving import BASE_NAME, llama_adapter, register_llama_task

from registry import AdapterRegistry, RegistrySettings

cli = importlib.import_module("pipelines.cli.main")


@pytest.fixture
def registry(embedded_home):
    return AdapterRegistry(RegistrySettings.from_env(home=embedded_home, tracking_uri=None, actor="tester"))


@pytest.fixture
def llama_base(tmp_path, registry):
    folder = tmp_path / "base"
    build("llama").save_pretrained(folder)
    return folder, registry.register_base(folder, name=BASE_NAME)


def serve(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()  # what the set-up printed
    code = cli.main(["serve", "--port", "8917", *args])
    return code, capsys.readouterr().err.strip()


def refused(code: int, err: str, home, *words: str) -> None:
    assert code == 2
    assert err.count("\n") == 0 and err.startswith("loraops: error: ")
    for word in words:
        assert word in err
    assert not (home / "serving").exists()  # no engine started, none recorded


def test_serve_without_a_production_adapter_names_the_fix(capsys, embedded_home, registry, llama_base, tmp_path):
    folder, base = llama_base
    register_llama_task(registry, "greet", llama_adapter(tmp_path / "a", folder), base)  # a candidate only
    refused(*serve(capsys), embedded_home, "no adapter is in production", "loraops promote")
    refused(*serve(capsys, "--base", BASE_NAME), embedded_home, f"no adapter on base {BASE_NAME}", "promote one")


def test_serve_an_unregistered_base_names_the_bases_in_production(
    capsys, embedded_home, registry, llama_base, tmp_path
):
    folder, base = llama_base
    register_llama_task(registry, "greet", llama_adapter(tmp_path / "a", folder), base)
    registry.promote("greet", 1, progress=False)
    refused(*serve(capsys, "--base", "org/other"), embedded_home, "'org/other' is not registered", BASE_NAME)


def test_serve_refuses_a_max_lora_rank_below_an_adapter(capsys, embedded_home, registry, llama_base, tmp_path):
    folder, base = llama_base
    register_llama_task(registry, "greet", llama_adapter(tmp_path / "a", folder, r=16), base)
    registry.promote("greet", 1, progress=False)
    refused(*serve(capsys, "--max-lora-rank", "8"), embedded_home, "rank 16, above --max-lora-rank 8", "set it to 16")
    refused(*serve(capsys, "--max-lora-rank", "12"), embedded_home, "not one vLLM takes")


def test_serve_a_classifier_only_base_says_where_classifiers_are_served(capsys, embedded_home, registry, tmp_path):
    from conftest import write_artifacts

    artifacts = write_artifacts(tmp_path)
    base = registry.register_base(artifacts["base"], name="tiny/bert")
    registry.register(
        "topics", artifacts["adapter"], base, "d" * 64, {"accuracy": 0.8}, loader_module="pipelines.pyfunc"
    )
    registry.promote("topics", 1, progress=False)
    refused(*serve(capsys), embedded_home, "no causal-LM adapter", "mlflow models serve")


def test_serve_refuses_a_port_in_use_and_an_engine_not_installed(
    capsys, monkeypatch, embedded_home, registry, llama_base, tmp_path
):
    folder, base = llama_base
    register_llama_task(registry, "greet", llama_adapter(tmp_path / "a", folder), base)
    registry.promote("greet", 1, progress=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        refused(*serve(capsys, "--port", port), embedded_home, f"port {port} on 127.0.0.1 is in use", "--port")
    monkeypatch.setenv("LORAOPS_VLLM", str(tmp_path / "no-venv" / "bin" / "python"))
    refused(*serve(capsys), embedded_home, "vLLM is not installed", "LORAOPS_SERVE=vllm bash infra/setup.sh")
