"""`loraops demo`: LoRA on the offline MiniLM base, end to end, with the numbers that matter.

Injects r=8 into query/value, trains a topic classifier on Debian package synopses,
shows accuracy before/after, checks merged = unmerged logits, saves the adapter.
"""

import os
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lora_core import LoraConfig, count_parameters, inject, merge, merge_and_unload, save_adapter, unmerge
from lora_core.injection import lora_layers

from . import data
from .evaluation import accuracy, predict_logits
from .models import default_base_model
from .train import train

DATA = Path(__file__).resolve().parent.parent / "examples" / "data" / "package-sections.jsonl"


def run_demo(
    steps: int = 300, batch_size: int = 16, lr: float = 1e-3, seed: int = 0, out_dir: Path | None = None, print_=print
) -> dict[str, float]:
    transformers.logging.set_verbosity_error()  # the load report of the new head is expected
    torch.manual_seed(seed)
    base_path = default_base_model()
    out_dir = out_dir or Path(os.environ.get("LORAOPS_HOME", ".loraops")) / "demo" / "adapter"
    examples = data.load_examples(str(DATA))
    train_set, test_set = data.split(examples)
    labels = data.label_names(examples)
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=len(labels))
    print_(f"base   {base_path.name}: all-MiniLM-L6-v2, task: Debian package synopsis -> section {labels}")
    print_(f"data   {DATA.name}: {len(train_set)} train / {len(test_set)} test")

    def test_batches():
        return data.batches(test_set, labels, tokenizer, 64, max_length=32)

    acc_before = accuracy(*predict_logits(model, test_batches()))
    config = LoraConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"])
    inject(model, config)
    trainable, total = count_parameters(model)
    lora_params = sum(sum(w.numel() for w in layer.factors("default")) for layer in lora_layers(model).values())
    print_(
        f"params trainable {trainable:,} of {total:,} ({100 * trainable / total:.2f}%): "
        f"LoRA {lora_params:,} = sum r*(d+k) over {len(lora_layers(model))} matrices, head {trainable - lora_params:,}"
    )

    started = time.perf_counter()
    report = max(1, steps // 6)
    train(
        model,
        lambda epoch: data.batches(train_set, labels, tokenizer, batch_size, 32, shuffle_seed=seed + epoch),
        steps=steps,
        lr=lr,
        on_step=lambda s, loss, cur_lr: (
            print_(f"train  step {s:4d}  loss {loss:.4f}  lr {cur_lr:.2e}") if s % report == 0 else None
        ),
    )
    print_(f"train  {steps} steps in {time.perf_counter() - started:.1f}s")

    unmerged, gold = predict_logits(model, test_batches())
    acc_after = accuracy(unmerged, gold)
    print_(f"eval   accuracy before {acc_before:.3f} -> after {acc_after:.3f} on {len(test_set)} held-out synopses")
    save_adapter(model, out_dir, base_model_name_or_path="sentence-transformers/all-MiniLM-L6-v2")
    merged = predict_logits(merge(model), test_batches())[0]
    unmerge(model)
    unloaded = predict_logits(merge_and_unload(model), test_batches())[0]
    diff_merged = ((merged - unmerged).abs().max() / unmerged.abs().max()).item()
    diff_unloaded = ((unloaded - unmerged).abs().max() / unmerged.abs().max()).item()
    print_(f"merge  max |merged - unmerged| / max|logit| = {diff_merged:.2e}; merge_and_unload: {diff_unloaded:.2e}")
    size = sum(f.stat().st_size for f in out_dir.iterdir())
    base_size = sum(f.stat().st_size for f in base_path.glob("*.safetensors"))
    print_(f"saved  {out_dir} (PEFT format): {size / 1024:.0f} KiB, {100 * size / base_size:.2f}% of the base weights")
    return {
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "merge_rel_diff": diff_merged,
        "unload_rel_diff": diff_unloaded,
        "trainable": trainable,
        "total": total,
        "adapter_bytes": size,
    }
