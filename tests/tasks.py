"""Tiny task set-ups for pipeline tests: tiny bases with MiniLM's real tokenizer, slices of the shipped data."""

import json
from pathlib import Path

import torch
import transformers
import yaml
from transformers import AutoTokenizer, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from pipelines.models import default_base_model

transformers.logging.set_verbosity_error()
DATA = Path(__file__).resolve().parent.parent / "examples" / "data" / "package-sections.jsonl"


def tiny_base(folder: Path, kind: str = "bert", seed: int = 0) -> Path:
    """A one-layer MiniLM (classification) or a tiny GPT-2 (causal LM), both with MiniLM's WordPiece tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(default_base_model())
    torch.manual_seed(seed)
    if kind == "bert":
        # MiniLM cut to one layer: real word embeddings, so a few dozen steps learn the task.
        model = BertForSequenceClassification.from_pretrained(default_base_model(), num_hidden_layers=1, num_labels=2)
    else:
        # Wide initial weights: the LM head is tied to the frozen embeddings, whose norm caps the logits.
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=tokenizer.vocab_size,
                n_embd=128,
                n_layer=2,
                n_head=4,
                n_positions=64,
                initializer_range=0.2,
                bos_token_id=tokenizer.cls_token_id,
                eos_token_id=tokenizer.sep_token_id,
            )
        )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def data_slice(folder: Path, rows: int = 240, causal: bool = False) -> Path:
    """`rows` synopses of the shipped data set, the same number per section; prompt/completion pairs for causal LM."""
    lines = [json.loads(line) for line in DATA.read_text().splitlines()]
    by_label: dict[str, list] = {}
    for row in lines:
        by_label.setdefault(row["label"], []).append(row)
    picked = [row for group in by_label.values() for row in group[: rows // len(by_label)]]
    path = folder / ("pairs.jsonl" if causal else "sections.jsonl")
    with open(path, "w") as f:
        for row in picked:
            record = {"prompt": f"{row['text']} . section :", "completion": row["label"]} if causal else row
            f.write(json.dumps(record) + "\n")
    return path


def write_task(folder: Path, name: str, base: Path, data: Path, causal: bool = False, **overrides) -> Path:
    spec = {
        "task": name,
        "type": "causal-lm" if causal else "classification",
        "base": {"model": str(base)},
        # no validation split unless a test asks: slices of a few hundred rows leave one too small to pick a pass on
        "data": {"path": str(data), "validation_fraction": 0},
        "lora": {
            "r": 4,
            "alpha": 8,
            "target_modules": ["c_attn"] if causal else ["query", "value"],
            "modules_to_save": [] if causal else ["classifier"],
        },
        "training": {
            "max_steps": 30,
            "batch_size": 16,
            "lr": 2e-2,
            "max_length": 32,
            "checkpoint_every": 10,
            "device": "cpu",
        },
        "gate": {"metric": "perplexity" if causal else "accuracy", "min_gain_over_base": 0.0},
        "promotion": {"mode": "adapter"},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            spec[section][field] = value
        else:
            spec[section] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def saved_adapter(folder: Path, base: Path, causal: bool = False, seed: int = 0):
    """An adapter on `base` as train_adapter saves it (PEFT format, class names beside it), with random B so it
    changes the output. Returns (folder, the adapted model in memory, its tokenizer, labels)."""
    from conftest import randomize_b

    from lora_core import LoraConfig, inject, save_adapter
    from pipelines.models import load_model

    labels = [] if causal else ["games", "graphics", "science"]
    model, tokenizer = load_model(base, "causal-lm" if causal else "classification", labels)
    inject(
        model,
        LoraConfig(
            r=4,
            alpha=8,
            target_modules=["c_attn"] if causal else ["query", "value"],
            modules_to_save=[] if causal else ["classifier"],
            task_type="CAUSAL_LM" if causal else "SEQ_CLS",
        ),
    )
    randomize_b(model, seed=seed + 2, std=0.5)
    save_adapter(model, folder, base_model_name_or_path=str(base))
    if labels:
        (folder / "labels.json").write_text(json.dumps(labels))
    return folder, model, tokenizer, labels
