"""Every version is an MLflow Model: mlflow.pyfunc loads `models:/<task>@production` from a real `mlflow server`
(artifacts proxied to S3), and `mlflow models serve` answers POST /invocations."""

import json
import os
import sys
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest
from servers import free_port, start, stop
from tasks import saved_adapter, tiny_base

from lora_core.checkpoint_merge import merge_checkpoint
from pipelines.serving import classify, complete
from pipelines.steps import head_config
from registry import AdapterRegistry, BaseMismatchError, RegistrySettings

TEXTS = ["chess engine with a graphical board", "scientific plotting library", "an image viewer"]
PROMPTS = ["chess engine . section :", "image viewer . section :"]
LOADER = "pipelines.pyfunc"  # the pyfunc loader module of every registered MLflow Model


@pytest.fixture(scope="module")
def versions(mlflow_server, tmp_path_factory):
    """Three tasks in production on the server: a classifier shipped merged, the same adapter-only, a causal LM."""
    root = tmp_path_factory.mktemp("mlflow-models")
    settings = RegistrySettings.from_env(
        home=root / "home", tracking_uri=mlflow_server["url"], promotion_target=str(root / "promoted"), actor="ci"
    )
    registry = AdapterRegistry(settings)
    bert, gpt2 = tiny_base(root / "bert"), tiny_base(root / "gpt2", "gpt2")
    adapter, model, tokenizer, labels = saved_adapter(root / "adapter", bert)
    merged = root / "merged"
    merge_checkpoint(bert, adapter, merged, config_updates=head_config(bert, "classification", labels))
    lm_adapter, lm, lm_tokenizer, _ = saved_adapter(root / "lm-adapter", gpt2, causal=True)
    expected = {
        "label": classify(model, tokenizer, TEXTS, labels),
        "completion": [complete(lm, lm_tokenizer, p, 5) for p in PROMPTS],
    }
    base, lm_base = registry.register_base(bert, name="tiny/bert"), registry.register_base(gpt2, name="tiny/gpt2")
    for task, folder, on, merged_dir, example in (
        ("cls-merged", adapter, base, merged, TEXTS[:1]),
        ("cls-adapter", adapter, base, None, TEXTS[:1]),
        ("lm-adapter", lm_adapter, lm_base, None, PROMPTS[:1]),
    ):
        registry.register(
            task,
            folder,
            on,
            "f" * 64,
            {"accuracy": 0.9},
            merged_dir=merged_dir,
            input_example=example,
            loader_module=LOADER,
        )
        registry.promote(task, 1, "merged" if merged_dir else "adapter", progress=False)
    return {
        "url": mlflow_server["url"],
        "expected": expected,
        "bases": {"bert": bert, "gpt2": gpt2},
        "root": root,
        "registry": registry,
    }


@pytest.fixture
def tracking(versions, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", versions["url"])
    return versions


def assert_same_classes(frame: pd.DataFrame, expected: list) -> None:
    assert list(frame["label"]) == [e.label for e in expected]
    assert frame["probability"].tolist() == pytest.approx([e.probability for e in expected], abs=1e-4)


@pytest.mark.parametrize("task", ["cls-merged", "cls-adapter"])
def test_pyfunc_classifies_like_the_trained_adapter(tracking, task):
    model = mlflow.pyfunc.load_model(f"models:/{task}@production")
    assert_same_classes(model.predict(TEXTS), tracking["expected"]["label"])
    assert_same_classes(model.predict(pd.DataFrame({"text": TEXTS})), tracking["expected"]["label"])
    signature = model.metadata.signature
    assert [c.name for c in signature.outputs.inputs] == ["label", "probability"]
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{task}@production"))
    assert (folder / "merged").is_dir() == (task == "cls-merged")
    if task == "cls-adapter":  # the base is named, not copied
        assert not any(folder.rglob("model.safetensors"))
        assert json.loads((folder / "data" / "loraops" / "description.json").read_text())["base"]["name"] == "tiny/bert"
    assert json.loads((folder / "serving_input_example.json").read_text()) == {"inputs": TEXTS[:1]}
    requirements = (folder / "requirements.txt").read_text()
    assert "torch==" in requirements and "transformers==" in requirements and "+cpu" not in requirements


def test_pyfunc_completes_prompts_with_a_causal_lm_adapter(tracking):
    model = mlflow.pyfunc.load_model("models:/lm-adapter@production")
    frame = model.predict(PROMPTS, params={"max_new_tokens": 5})
    assert frame["completion"].tolist() == tracking["expected"]["completion"]


def test_an_adapter_only_model_refuses_a_base_with_other_weights(tracking, tmp_path):
    other = tiny_base(tmp_path / "other", seed=1)
    with pytest.raises(
        BaseMismatchError, match=r"trained on tiny/bert \(fingerprint [0-9a-f]{12}\), but .* has fingerprint"
    ):
        mlflow.pyfunc.load_model("models:/cls-adapter@production", model_config={"base_path": str(other)})


def test_mlflow_models_serve_answers_invocations(tracking, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bindir = Path(sys.executable).parent  # an activated venv: mlflow execs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking["url"], "PATH": f"{bindir}:{os.environ['PATH']}"}
    process = start(
        [
            str(bindir / "mlflow"),
            "models",
            "serve",
            "-m",
            "models:/cls-adapter@production",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        f"{url}/ping",
        tmp_path / "serve.log",
        env,
    )
    try:
        request = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps({"inputs": TEXTS}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        stop(process)
    assert_same_classes(pd.DataFrame(answer["predictions"]), tracking["expected"]["label"])
