"""The Prefect flow end to end on tiny models, through Prefect's test harness (a real local Prefect
server), with the embedded registry (MLflow on SQLite, promotion into a folder) in a tmp dir."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tasks import data_slice, tiny_base, write_task

from pipelines.errors import GateBlocked
from pipelines.results import FlowResult
from pipelines.serving import AdapterSwitcher
from registry import AdapterRegistry, BaseMismatchError

LORAOPS = str(Path(sys.executable).parent / "loraops")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("prefect-results")}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bases")
    return {
        "bert": tiny_base(folder / "bert"),
        "gpt2": tiny_base(folder / "gpt2", "gpt2"),
        "other-bert": tiny_base(folder / "other-bert", seed=1),
    }


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAOPS_HOME", str(tmp_path / "home"))
    for name in ("MLFLOW_TRACKING_URI", "LORAOPS_PROMOTION_TARGET"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


def mlflow_client(registry: AdapterRegistry):
    """MLflow as a user reads it (the UI's data): runs, metrics, model versions."""
    from mlflow import MlflowClient

    return MlflowClient(registry.settings.tracking_uri)


def test_a_run_with_a_validation_split_logs_the_kept_weights_validation(prefect_server, bases, home, tmp_path):
    """Beside the curve of passes (val_<metric> per pass), the validation of the weights training kept (the mean of
    the late passes by default): what the run's adapter scores on that split, as a search's trials log it."""
    from pipelines.flows import train_adapter

    path = write_task(
        tmp_path,
        "kept",
        bases["bert"],
        data_slice(tmp_path),
        training__max_steps=20,
        data__validation_fraction=0.2,
        gate={"min_gain_over_base": -1.0},
    )
    result = train_adapter(str(path))
    assert result.trained.best_validation is not None and result.trained.averaged_steps
    metrics = mlflow_client(AdapterRegistry()).get_run(result.run_id).data.metrics
    kept = result.trained.best_validation.metrics
    assert {f"best_val_{name}" for name in kept} <= set(metrics)
    assert metrics["best_val_accuracy"] == pytest.approx(kept["accuracy"]) and "val_accuracy" in metrics


def task_runs(flow_run_id) -> dict[str, str]:
    """{task name: state name} for one flow run, read back from the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def test_classification_flow_registers_promotes_merged_and_an_unchanged_rerun_is_cached(
    prefect_server, bases, home, tmp_path, monkeypatch
):
    from pipelines.flows import train_adapter

    path = write_task(
        tmp_path,
        "sections",
        bases["bert"],
        data_slice(tmp_path),
        training__max_steps=60,
        promotion={"mode": "merged", "auto": True},
        gate={"metric": "accuracy", "min_gain_over_base": 0.1},
    )
    state = train_adapter(str(path), return_state=True)
    first = state.result()
    assert first.evaluation.adapter["accuracy"] > first.evaluation.base["accuracy"] + 0.1
    assert first.promotion.mode == "merged" and first.evaluation.passed
    registry = AdapterRegistry()
    record = registry.resolve("sections")
    assert record.version == 1 and set(record.manifests) == {"adapter", "merged"}
    assert (home / "promoted" / "sections" / "v1" / "merged" / "manifest.json").exists()
    mlflow = mlflow_client(registry)
    run = mlflow.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert len(mlflow.get_metric_history(first.run_id, "train_loss")) == 60
    assert run.inputs.dataset_inputs[0].dataset.digest == record.dataset_fingerprint[:36]
    assert {a.path for a in mlflow.list_artifacts(first.run_id, "analysis")} >= {
        "analysis/report.json",
        "analysis/scree.png",
    }
    assert task_runs(state.state_details.flow_run_id)["train"] == "Completed"
    import mlflow.pyfunc  # the version is an MLflow Model on the embedded registry too

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.settings.tracking_uri)
    texts = ["a chess engine", "a 3D modeller"]
    predictions = mlflow.pyfunc.load_model("models:/sections@production").predict(texts)
    expected = AdapterSwitcher(registry).predict("sections@production", texts)
    assert list(predictions["label"]) == [e.label for e in expected]
    assert predictions["probability"].tolist() == pytest.approx([e.probability for e in expected], abs=1e-4)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        keys = {a.key for a in client.read_artifacts() if a.key and a.key.startswith("sections-")}
    assert keys == {
        f"sections-{step}" for step in ("data", "train", "evaluate", "merge", "analyze", "register", "promote")
    }
    with get_client(sync_client=True) as client:  # the Prefect UI reads like a log
        assert client.read_flow_run(state.state_details.flow_run_id).name == "sections-v1"

    again = train_adapter(str(path), return_state=True)
    assert task_runs(again.state_details.flow_run_id)["train"] == "Cached"
    assert isinstance(again.result(), FlowResult) and again.result().version == 1  # typed from the JSON cache
    assert again.result().trained == first.trained and [r.version for r in registry.list_versions("sections")] == [1]
    # The home's work folder deleted, Prefect's cache (under its own storage path) kept: the steps whose cached results
    # name files there run again instead of handing later steps folders that are gone
    shutil.rmtree(home / "work" / "sections")
    third = train_adapter(str(path))
    assert Path(third.trained.adapter, "adapter_model.safetensors").is_file()
    assert Path(third.analysis.folder, "report.json").is_file() and third.promotion.mode == "merged"


def test_a_minimal_task_file_trains_registers_and_promotes(prefect_server, home, tmp_path):
    """task, type, data and nothing else: the default base, targets by architecture, the head, all the data trained
    on (no validation split: the default average needs none), the mean of the late weights registered, promoted as
    an adapter."""
    import yaml

    from pipelines.flows import train_adapter

    path = tmp_path / "minimal.yaml"
    path.write_text(
        yaml.safe_dump({"task": "minimal", "type": "classification", "data": {"path": str(data_slice(tmp_path, 120))}})
    )
    result = train_adapter(str(path))
    assert result.evaluation.passed and result.promotion.mode == "adapter"
    registry = AdapterRegistry()
    record = registry.resolve("minimal")
    assert record.version == 1 and record.base_name == "sentence-transformers/all-MiniLM-L6-v2"
    adapter = registry.fetch("minimal", 1)
    targets = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    assert {t.rsplit(".", 1)[-1] for t in targets} == {"query", "key", "value", "dense"}
    assert any(".classifier." in k for k in load_file(adapter / "adapter_model.safetensors"))
    trained = result.trained
    assert mlflow_client(registry).get_metric_history(result.run_id, "val_loss") == []  # nothing held out
    assert len(trained.averaged_steps) >= 2 and trained.best_validation is None
    assert min(trained.averaged_steps) > trained.steps / 2  # the mean of the weights of the second half
    assert (home / "promoted" / "minimal" / "v1" / "adapter" / "manifest.json").exists()


def test_auto_rank_is_recorded_on_the_version_it_ships(prefect_server, bases, home, tmp_path):
    from pipelines.flows import train_adapter

    path = write_task(
        tmp_path,
        "ranked",
        bases["bert"],
        data_slice(tmp_path, 120),
        training__max_steps=20,
        lora={"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
        gate={"metric": "accuracy", "min_gain_over_base": -1.0},
        promotion={"mode": "merged", "rank": "auto", "rank_tolerance": 1.0},
    )
    result = train_adapter(str(path))
    ranking = result.ranking
    assert ranking.shipped and ranking.rank < 8  # 20 steps of r=8 leave most of |dW|^2 in a few directions
    record = AdapterRegistry().resolve("ranked")
    assert record.lora.r == ranking.rank and record.spectrum["shipped_rank"] == ranking.rank
    assert record.spectrum["trained_rank"] == 8 and record.spectrum["rank_at_95"] == ranking.rank
    assert record.spectrum["compressed_bytes_saved"] == ranking.bytes_saved > 0
    description = mlflow_client(AdapterRegistry()).get_model_version("ranked", str(record.version)).description
    assert description == f"gate passed; rank: {ranking.reason}"
    assert (home / "promoted" / "ranked" / "v1" / "merged" / "manifest.json").exists()


def test_the_gate_blocks_an_adapter_worse_than_production(prefect_server, bases, home, tmp_path):
    from pipelines.flows import train_adapter

    data = data_slice(tmp_path)
    good = train_adapter(str(write_task(tmp_path, "gated", bases["bert"], data, training__max_steps=60)))
    assert good.promotion is not None
    (tmp_path / "worse").mkdir()
    worse = write_task(tmp_path / "worse", "gated", bases["bert"], data, training__max_steps=2, training__lr=1e-5)
    state = train_adapter(str(worse), return_state=True)
    assert state.is_failed() and "gate blocked v2" in state.message  # the flow run says why
    with pytest.raises(GateBlocked) as blocked:
        state.result()
    assert any("worse than production" in r or "below the required" in r for r in blocked.value.reasons)
    registry = AdapterRegistry()
    assert registry.resolve("gated").version == good.version == 1  # production unchanged, nothing promoted
    assert registry.resolve("gated", "candidate").version == 2  # registered for review
    run = mlflow_client(registry).get_run(blocked.value.run_id)
    assert run.info.status == "FAILED" and run.data.tags["loraops.failure"].startswith("gate: ")


def test_causal_lm_flow_trains_on_completions_and_lowers_perplexity(prefect_server, bases, home, tmp_path):
    from pipelines.flows import train_adapter

    path = write_task(
        tmp_path,
        "section-words",
        bases["gpt2"],
        data_slice(tmp_path, causal=True),
        causal=True,
        training__max_steps=80,
        lora={"r": 8, "alpha": 16, "target_modules": "all-linear"},
    )
    result = train_adapter(str(path))
    e = result.evaluation
    assert e.adapter["perplexity"] < e.base["perplexity"] / 10 and e.merge_gap < 1e-4
    assert result.promotion.mode == "adapter"
    from pipelines.serving import AdapterSwitcher

    completion = AdapterSwitcher().predict("section-words", ["Chess game with a 3D board . section :"])[0].completion
    assert completion.split()[0] in ("games", "graphics", "science", "sound")


def test_predict_switches_adapters_on_one_base_and_refuses_another_base(prefect_server, bases, home, tmp_path):
    from lora_core.injection import lora_layers
    from pipelines.flows import train_adapter
    from pipelines.serving import AdapterSwitcher

    data = data_slice(tmp_path)
    for name, base in (("first", "bert"), ("second", "bert"), ("elsewhere", "other-bert")):
        # The gate is not what this test is about: every version is promoted, near chance or not.
        train_adapter(
            str(
                write_task(
                    tmp_path,
                    name,
                    bases[base],
                    data,
                    training__max_steps=20,
                    training__seed=len(name),
                    gate__min_gain_over_base=-1.0,
                )
            )
        )
    switcher = AdapterSwitcher()
    texts = ["a chess engine", "audio mixer for the desktop"]
    first = switcher.predict("first", texts)
    pointers = {p: layer.base_layer.weight.data_ptr() for p, layer in lora_layers(switcher.model).items()}
    second = switcher.predict("second@production", texts)
    assert switcher.predict("first:1", texts) == first
    assert switcher.base_loads == 1 and set(switcher.labels) == {"first-v1", "second-v1"}
    assert pointers == {p: layer.base_layer.weight.data_ptr() for p, layer in lora_layers(switcher.model).items()}
    assert [r.probability for r in first] != [r.probability for r in second]
    with pytest.raises(BaseMismatchError, match="trained on base"):
        switcher.predict("elsewhere", texts)


def test_schedule_creates_a_deployment_with_the_cron_and_no_overlap(prefect_server, bases, home, tmp_path):
    from prefect.client.orchestration import get_client

    from pipelines.cli.run import schedule

    path = write_task(tmp_path, "nightly", bases["bert"], data_slice(tmp_path))
    deployment_id = schedule(str(path), "0 3 * * *", apply_only=True, print_=lambda *_: None)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.name == "nightly" and deployment.parameters == {"spec_path": str(path.resolve())}
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    assert deployment.global_concurrency_limit.limit == 1
    from prefect.utilities.importtools import import_object

    assert import_object(deployment.entrypoint).name == "train_adapter"  # what a worker or `serve` will load


@pytest.mark.parametrize(
    "problem, message",
    [
        ("yaml", "training.batch_size: Input should be greater than 0"),
        ("data", "lack a non-empty 'text' or 'label'"),
    ],
)
def test_bad_yaml_or_data_exit_2_in_one_line_and_register_nothing(bases, home, tmp_path, problem, message):
    data = data_slice(tmp_path)
    if problem == "data":
        data.write_text(data.read_text() + json.dumps({"text": "no label"}) + "\n")
    path = write_task(
        tmp_path, "broken", bases["bert"], data, **({"training__batch_size": 0} if problem == "yaml" else {})
    )
    done = subprocess.run([LORAOPS, "run", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr
    assert not (home / "mlflow.db").exists() or AdapterRegistry().list_versions() == []


def test_training_under_torchrun_with_two_processes(bases, home, tmp_path):
    from pipelines import steps
    from pipelines.distributed import train_with_torchrun
    from pipelines.task_files import load_spec

    spec = load_spec(
        write_task(tmp_path, "ddp", bases["bert"], data_slice(tmp_path, 120), training__max_steps=6, training__nproc=2)
    )
    prepared = steps.prepare_data(spec, tmp_path / "work")
    registry = AdapterRegistry()
    run_id = registry.runs.start("ddp", "ddp", {})
    result = train_with_torchrun(spec, prepared, bases["bert"], tmp_path / "run", run_id, registry.settings)
    assert result.steps == 6 and torch.isfinite(torch.tensor(result.final_loss))
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    assert len(mlflow_client(registry).get_metric_history(run_id, "train_loss")) == 6  # rank 0 alone logs


def test_training_across_two_nodes_joined_by_train_node(bases, home, tmp_path, monkeypatch):
    """Multi-node torchrun in miniature: the flow's node hosts the c10d rendezvous, `loraops train-node` (another
    process, as another node would run it) finds the run on the shared LORAOPS_HOME and joins; Gloo on CPU."""
    from servers import free_port

    from pipelines import steps
    from pipelines.distributed import pending_dir, train_with_torchrun
    from pipelines.task_files import load_spec

    monkeypatch.setenv("LORAOPS_RDZV_ENDPOINT", f"127.0.0.1:{free_port()}")
    spec = load_spec(
        write_task(
            tmp_path, "nodes", bases["bert"], data_slice(tmp_path, 120), training__max_steps=6, training__nnodes=2
        )
    )
    prepared = steps.prepare_data(spec, tmp_path / "work")
    registry = AdapterRegistry()
    run_id = registry.runs.start("nodes", "nodes", {})
    guest = subprocess.Popen([LORAOPS, "train-node", "--once", "--wait", "120"], stderr=subprocess.PIPE, text=True)
    try:
        result = train_with_torchrun(spec, prepared, bases["bert"], tmp_path / "run", run_id, registry.settings)
    finally:
        _, err = guest.communicate(timeout=120)
    assert guest.returncode == 0, err
    assert result.world_size == 2 and result.steps == 6
    assert len(mlflow_client(registry).get_metric_history(run_id, "train_loss")) == 6
    assert not list(pending_dir(home).glob("*.json"))  # the announcement is gone with the run


def test_train_node_with_nothing_to_join_says_so(home):
    done = subprocess.run([LORAOPS, "train-node", "--wait", "0.5"], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "no multi-node run was announced" in done.stderr and "training.nnodes > 1" in done.stderr
