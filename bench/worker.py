"""One measured job in a fresh process, so its peak RSS is its own: `python -m bench.worker JOB IMPL ARGS...`."""

import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.harness import peak_rss

torch.set_num_threads(2)


def minilm_step(impl: str, steps: int) -> dict:
    """Median seconds of an AdamW train step (MiniLM classifier, batch 32 x 64 tokens, float32 weights) and the peak
    RSS. `ours` and `full` (full fine-tuning) step as loraops's training loop does: its CPU dropout, its AdamW (fused
    where torch has it) and bf16 autocast where the CPU has native bf16 (pipelines.device); `peft` as a plain
    PyTorch loop in float32, as PEFT's users train on a CPU, and `peft-bf16` the same under
    torch.autocast("cpu", bfloat16); `ours-compiled` is `ours` under torch.compile (inductor, dynamic shapes, as
    batches padded to their own longest vary in length), its first step (the compile) reported apart."""
    import contextlib

    from transformers import AutoModelForSequenceClassification

    from pipelines.cpu_dropout import cpu_dropout
    from pipelines.device import autocast
    from pipelines.models import default_base_model
    from pipelines.train import adamw

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(default_base_model(), num_labels=4)
    if impl.startswith("ours"):
        from lora_core import LoraConfig, inject

        inject(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"], modules_to_save=["classifier"]))
    elif impl.startswith("peft"):
        import peft

        model = peft.get_peft_model(
            model, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS")
        )
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    # ours and full: the loop's AdamW (fused where torch has it); PEFT: torch.optim.AdamW as a plain loop writes it
    optimizer = (
        adamw(named, 1e-4, 1.0, 0.0) if impl.startswith(("ours", "full")) else torch.optim.AdamW(params, lr=1e-4)
    )
    g = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(1000, 20000, (32, 64), generator=g),
        "attention_mask": torch.ones(32, 64, dtype=torch.long),
        "labels": torch.randint(0, 4, (32,), generator=g),
    }
    model.train()
    times = []
    cpu = torch.device("cpu")

    def precision() -> contextlib.AbstractContextManager:
        if impl == "peft":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16) if impl == "peft-bf16" else autocast(cpu, training=True)

    forward = torch.compile(model, dynamic=True) if impl == "ours-compiled" else model
    with contextlib.nullcontext() if impl.startswith("peft") else cpu_dropout(model, cpu):
        for _ in range(steps + 2):  # two warm-up steps
            started = time.perf_counter()
            with precision():
                loss = forward(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
    checkpoint = sum(p.numel() * p.element_size() for p in params)
    return {
        "step": statistics.median(times[2:]),
        "first": times[0],
        "peak": peak_rss(),
        "trainable": sum(p.numel() for p in params),
        "checkpoint_bytes": checkpoint,
    }


def disk_merge(impl: str, base: str, adapter: str, out: str) -> dict:
    import os

    shutil.rmtree(out, ignore_errors=True)
    for path in Path(base).iterdir():  # the base in the page cache, as right after training: every side alike
        with open(path, "rb") as f:
            while f.read(64 * 2**20):
                pass
    os.sync()  # start with no dirty pages from the previous run: each side pays for its own writes
    started = time.perf_counter()
    if impl == "floor":  # read and write every byte once (no kernel-side copy): what any merge must at least do
        Path(out).mkdir()
        for path in Path(base).iterdir():
            with open(path, "rb") as src, open(Path(out) / path.name, "wb") as dst:
                while chunk := src.read(64 * 2**20):
                    dst.write(chunk)
    elif impl == "ours":
        from lora_core.checkpoint_merge import merge_checkpoint

        merge_checkpoint(base, adapter, out)
    else:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        merged.save_pretrained(out, max_shard_size="500MB")
    os.sync()  # the merged model is on disk, not only in the page cache
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": seconds, "peak": peak_rss()}


def plain_steps(home: str, *tasks: str) -> dict:
    """The flow's steps as plain functions, no Prefect, no caching: the anchor of the flow-overhead case."""
    import os

    os.environ["LORAOPS_HOME"] = home
    from pipelines.task_files import load_spec
    from registry import AdapterRegistry

    for task in tasks:
        plain_task(load_spec(task), AdapterRegistry())
    return {"tasks": len(tasks)}


def plain_task(spec, registry) -> None:
    from pipelines import steps
    from pipelines.analysis import analyze_adapter
    from pipelines.models import register_task_base
    from pipelines.tasks import LOADER_MODULE

    work = registry.settings.home / "work" / spec.task
    prepared = steps.prepare_data(spec, work)
    base_path, base = register_task_base(registry, spec.base)
    trained = steps.fit_adapter(spec, prepared, base_path, work / "run")
    evaluation = steps.evaluate_adapter(spec, prepared, base_path, trained.adapter, None)
    merged = (
        steps.merge_model(spec, prepared, base_path, trained.adapter, work / "run" / "merged")
        if spec.promotion.mode == "merged"
        else None
    )
    analyze_adapter(trained.adapter, str(base_path), work / "analysis")
    metrics = {
        f"{row}_{name}": v
        for row, values in (("adapter", evaluation.adapter), ("base", evaluation.base))
        for name, v in values.items()
    }
    record = registry.register(
        spec.task, trained.adapter, base, prepared.digest, metrics, merged_dir=merged, loader_module=LOADER_MODULE
    )
    registry.promote(spec.task, record.version, spec.promotion.mode, spec.promotion.target, progress=False)


if __name__ == "__main__":
    job, impl, *args = sys.argv[1:]
    if job == "train":
        result = minilm_step(impl, int(args[0]))
    elif job == "steps":
        result = plain_steps(*args)
    else:
        result = disk_merge(impl, *args)
    print(json.dumps(result))
