"""Classifiers in vLLM (its CPU build from .venv-serve), measured rather than read: a merged MiniLM classifier served
by vLLM's classify runner gives our own probabilities, and vLLM refuses LoRA on a sequence classifier, so an
unmerged classifier adapter (its head a saved module besides) cannot go to vLLM: classifier adapters stay with
`mlflow models serve`, a merged classifier can be served as a model of its own."""

import httpx
import pytest
import torch
from llama_serving import needs_vllm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lora_core import LoraConfig, inject
from lora_core.merging import merge_and_unload
from pipelines.engine_watchdog import group_alive
from pipelines.errors import EngineFailed
from pipelines.models import default_base_model
from pipelines.prefect_server import free_port
from pipelines.serve_plan import Sizing
from pipelines.vllm_engine import EngineSettings, RunningEngine, engine_command

pytestmark = needs_vllm
TEXTS = ["a chess engine for the terminal", "an IMAP server", "a library for parsing XML"]
LABELS = {0: "admin", 1: "games", 2: "libs"}


def merged_classifier(folder):
    """MiniLM with a three-label head and a LoRA update (B random, as after training) merged in, saved."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        default_base_model(), num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    inject(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.normal_(std=0.1)
    model = merge_and_unload(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with torch.no_grad():
        return torch.softmax(model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits, -1)


def test_vllm_serves_a_merged_classifier_as_our_prediction_and_refuses_lora_on_it(tmp_path):
    ours = merged_classifier(tmp_path / "merged")
    settings, port = EngineSettings.from_env(), free_port()
    command = engine_command(settings, tmp_path / "merged", "sections", [], None, "127.0.0.1", port, "float32")
    engine = RunningEngine(command, tmp_path / "classify.log")
    try:
        engine.wait_healthy(f"http://127.0.0.1:{port}", 600)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/classify", json={"model": "sections", "input": TEXTS}, timeout=120
        ).raise_for_status()
    finally:
        engine.stop()
    assert not group_alive(engine.pid)
    data = answer.json()["data"]
    theirs = torch.tensor([row["probs"] for row in data])
    assert (theirs - ours).abs().max() < 1e-5  # float32 both sides
    assert [row["label"] for row in data] == [LABELS[int(i)] for i in ours.argmax(-1)]

    sizing = Sizing(max_loras=1, max_cpu_loras=1, max_lora_rank=8, per_replica=1, replicas=1, inline=True)
    port = free_port()
    command = engine_command(settings, tmp_path / "merged", "sections", [], sizing, "127.0.0.1", port, "float32")
    refused = RunningEngine(command, tmp_path / "lora.log")
    try:
        with pytest.raises(EngineFailed, match="vLLM exited at start"):
            refused.wait_healthy(f"http://127.0.0.1:{port}", 600)
    finally:
        refused.stop()
    assert "BertForSequenceClassification does not support LoRA" in (tmp_path / "lora.log").read_text()
