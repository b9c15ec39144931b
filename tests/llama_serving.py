"""A tiny Llama that vLLM's CPU backend serves (head_dim 64: it refuses 16), adapters on it, and the registry set-up
the serving tests share. vLLM itself runs from its own venv (infra/setup-serve.sh); tests that need it carry
`needs_vllm`, which skips them with one reason when that venv is not built."""

import json
from pathlib import Path

import pytest
import torch
from conftest import randomize_b
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lora_core import LoraConfig, inject, merge_and_unload, save_adapter
from pipelines.models import default_base_model
from pipelines.vllm_engine import EngineSettings
from registry import AdapterRegistry, BaseRecord, VersionRecord

BASE_NAME = "tiny-llama"
DATASET = "d" * 64
LOADER = "pipelines.pyfunc"

needs_vllm = pytest.mark.skipif(
    not EngineSettings.from_env().executable.exists(),
    reason="vLLM's venv is not built: LORAOPS_SERVE=vllm bash infra/setup.sh (or set LORAOPS_VLLM)",
)


def tiny_llama(folder: Path) -> Path:
    """hidden 256, 4 heads of 64, 2 layers, MiniLM's WordPiece tokenizer; wide initial weights so that greedy
    tokens are far from ties (a near-tie could flip between two correct implementations)."""
    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        initializer_range=0.2,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def llama_adapter(
    folder: Path, base: Path, seed: int = 0, merged: Path | None = None, config: dict | None = None, **lora
) -> Path:
    """A PEFT adapter on `base` with random B (it changes the output); `lora` overrides LoraConfig (r, targets,
    modules_to_save), `config` keys written into adapter_config.json afterwards (what another trainer's file
    carries: use_dora, bias, base_model_name_or_path). `merged`: also save the merged model there."""
    model = LlamaForCausalLM.from_pretrained(base)
    settings = {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM", **lora}
    inject(model, LoraConfig(**settings))
    randomize_b(model, seed=seed + 2, std=0.5)
    save_adapter(model, folder, base_model_name_or_path=BASE_NAME)
    if config:
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    if merged is not None:
        merge_and_unload(model).save_pretrained(merged)
        AutoTokenizer.from_pretrained(base).save_pretrained(merged)
    return folder


def register_llama_task(
    registry: AdapterRegistry, task: str, adapter: Path, base: BaseRecord, gate: str = "passed"
) -> VersionRecord:
    return registry.register(task, adapter, base, DATASET, {"perplexity": 10.0}, loader_module=LOADER, gate=gate)
