"""What one training run costs beside PEFT with Hugging Face's Trainer (--only "training cost").

Time to train a real task (examples/data/package-sections.jsonl) to the pass loraops keeps, with loraops's defaults
(the minimal task file, as bench.quality writes it), vs `peft.get_peft_model` (r=8, alpha=16, dropout 0.1 on
query/value, the head saved: PEFT's sequence-classification recipe, lr 1e-3) trained by `transformers.Trainer` with
`train_sampling_strategy="group_by_length"` (Trainer's length grouping) and DataCollatorWithPadding (per-batch
padding), on the same training split, with the same batch size, epochs, max_length, warm-up share and seed.
Test accuracy is measured beside each on the same test split: the time claim holds at equal quality or not at all.
Each side trains in a fresh process; time is the training call's wall time (loraops: its validation passes
included; neither side's model loading or tokenizing).

    python -m bench.training_cost [--quick]   # the two sides alone, printed
"""

import json
import os
import sys
import time
from pathlib import Path

from bench.harness import in_child
from bench.quality import PEFT_LR, peft_recipe, task_file

TASK = "package-sections"
SIDES = ("loraops", "loraops-qv", "trainer", "trainer-bf16")
EQUAL_TARGETS = ["lora.target_modules=[query, value]"]  # PEFT's recipe's targets, the rest loraops's defaults


def loraops_side(work: Path, seed: int, quick: bool, settings: list[str] = (), side: str = "loraops") -> dict:
    """loraops's defaults (with `settings`) through steps.fit_adapter: {seconds, to_kept, steps, kept_step,
    accuracy}."""
    from pipelines import steps
    from pipelines.models import resolve_base
    from pipelines.task_files import load_spec

    spec = load_spec(task_file(work, TASK, seed, quick, settings))
    prepared = steps.prepare_data(spec, work / "data")
    base = resolve_base(spec.base)[0]
    passes: dict[int, float] = {}
    last = [0.0]

    def on_step(step: int, loss: float, lr: float) -> None:
        last[0] = time.perf_counter()

    def on_validation(step: int, metrics: dict[str, float]) -> None:
        passes[step] = last[0] = time.perf_counter()

    trained = steps.fit_adapter(spec, prepared, base, work / f"{side}-{seed}", on_step, on_validation)
    evaluation = steps.evaluate_adapter(spec, prepared, base, trained.adapter, None)
    # fit_adapter's own clock less what came after the kept pass (the pass whose weights are kept; the whole run
    # when what is kept is no single pass); the little after the last step counts as before it
    after = last[0] - passes[trained.best_step] if trained.best_step in passes else 0.0
    return {
        "seconds": trained.seconds,
        "to_kept": trained.seconds - after,
        "steps": trained.steps,
        "kept_step": trained.best_step,
        "accuracy": evaluation.adapter["accuracy"],
    }


def trainer_side(work: Path, seed: int, quick: bool, bf16: bool = False) -> dict:
    """PEFT + transformers.Trainer (group_by_length, per-batch padding) on loraops's training split; float32 as
    Trainer's default, or with bf16=True (Trainer's bf16 autocast, on a CPU too)."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from pipelines import steps
    from pipelines.evaluation import accuracy, predict_logits
    from pipelines.models import load_model, resolve_base
    from pipelines.task_files import load_spec

    spec = load_spec(task_file(work, TASK, seed, quick))
    t = spec.training
    prepared = steps.prepare_data(spec, work / "data")
    torch.manual_seed(seed)
    model, tokenizer = load_model(resolve_base(spec.base)[0], "classification", prepared.labels)
    model = peft_recipe(model)
    examples = steps.read_split(prepared, "train")
    encoded = tokenizer([e.text for e in examples], truncation=True, max_length=t.max_length)
    index = {name: i for i, name in enumerate(prepared.labels)}
    rows = [{**{k: v[i] for k, v in encoded.items()}, "labels": index[e.label]} for i, e in enumerate(examples)]
    n_steps = steps.total_steps(spec, len(rows))
    args = TrainingArguments(
        output_dir=str(work / f"trainer-{seed}"),
        per_device_train_batch_size=t.batch_size,
        max_steps=n_steps,
        learning_rate=PEFT_LR,
        warmup_steps=t.warmup_fraction,
        weight_decay=t.weight_decay,
        train_sampling_strategy="group_by_length",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=bf16,
        seed=seed,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    test = steps.split_tokens(spec, prepared, "test", tokenizer)
    logits, gold = predict_logits(model, steps.make_batches(spec, test, batch_size=64), "cpu")
    return {
        "seconds": seconds,
        "to_kept": seconds,
        "steps": n_steps,
        "kept_step": n_steps,
        "accuracy": accuracy(logits, gold),
    }


def training_cost(quick: bool, home: Path) -> list[dict]:
    from bench.cases import row
    from pipelines.device import cpu_bf16

    work = home / "training-cost"
    work.mkdir(parents=True, exist_ok=True)
    runs = {
        side: in_child(
            "bench.training_cost",
            "--child",
            side,
            str(work),
            *(["--quick"] if quick else []),
            env={"LORAOPS_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"},
        )
        for side in SIDES
        if side != "trainer-bf16" or cpu_bf16()  # elsewhere autocast emulates bf16: many times slower, not a baseline
    }
    ours, theirs, equal, bf16 = runs["loraops"], runs["trainer"], runs["loraops-qv"], runs.get("trainer-bf16")
    quality = (
        f"test accuracy {100 * ours['accuracy']:.1f} vs {100 * theirs['accuracy']:.1f}; "
        f"loraops kept step {ours['kept_step']} of {ours['steps']}, Trainer {theirs['steps']} steps"
    )
    what = f"{TASK}, loraops defaults vs PEFT r=8 q,v + head with HF Trainer (group_by_length), batch 16, same epochs"
    rows = [
        row(f"train {what}: time to the kept pass (s)", ours["to_kept"], theirs["seconds"], "s", "<= 0.8x", quality),
        row("  same, whole run (s)", ours["seconds"], theirs["seconds"], "s", "report", quality),
        row(
            "  same, loraops on PEFT's targets (query, value) (s)",
            equal["seconds"],
            theirs["seconds"],
            "s",
            "report",
            f"test accuracy {100 * equal['accuracy']:.1f}; loraops's default targets are six matrices per layer",
        ),
    ]
    if bf16:
        note = (
            f"Trainer's test accuracy {100 * bf16['accuracy']:.1f}; loraops: bf16 autocast (native bf16 on this CPU), "
            "its LoRA update float32; Trainer's default is float32"
        )
        rows.append(row("  same, Trainer with bf16=True (s)", ours["to_kept"], bf16["seconds"], "s", "report", note))
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        import torch

        torch.set_num_threads(2)
        side, work, quick = sys.argv[2], Path(sys.argv[3]), "--quick" in sys.argv
        if side.startswith("trainer"):
            print(json.dumps(trainer_side(work, 0, quick, bf16=side == "trainer-bf16")))
        else:
            print(json.dumps(loraops_side(work, 0, quick, EQUAL_TARGETS if side == "loraops-qv" else [], side)))
    else:
        import tempfile

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        for r in training_cost("--quick" in sys.argv, Path(tempfile.mkdtemp(prefix="loraops-cost-"))):
            print(r)
