"""Quality of loraops's defaults beside PEFT's usual LoRA recipe and full fine-tuning, on real text tasks, several seeds.

    python -m bench.quality [--seeds 3] [--quick] [--out DIR]   # writes QUALITY.md and quality-results.json

Each (task, seed, method) trains in a fresh process (its peak RSS is its own) on the same splits of the same data:
- loraops: the minimal task file (task, type, data; everything else default), through `steps.fit_adapter`,
  validation passes every tenth of the run, keeping the mean of the late passes' weights (training.selection);
- PEFT: `peft.get_peft_model` with r=8, alpha=16, dropout 0.1 on query/value, the head in modules_to_save (PEFT's
  sequence-classification recipe), AdamW lr 1e-3, last step kept;
- full fine-tuning: every weight trains, AdamW lr FULL_LR, last step kept;
- loraops-qv: loraops's loop and selection with PEFT's adapter (r=8, alpha=16, dropout 0.1 on query/value, lr 1e-3):
  train time at equal targets, and what the loop alone gives.
PEFT and full fine-tuning train in float32, as their users do on a CPU (Trainer's default); loraops as its loop does
by default: bf16 autocast where the CPU has native bf16, the LoRA update and its sum float32 (pipelines.device).
All three get the same budget: loraops's default number of epochs.
PEFT and full fine-tuning select nothing, so they hold nothing out: they train on loraops's train and validation
splits together (by default loraops holds none out either: all three train on the same data).
All three use the same training loop, batches (length-grouped, batch 16, 64 tokens), warm-up/decay schedule and the
same test split; accuracy is measured on that held-out split, train time is the training loop's wall time
(validation passes included for loraops), peak memory is the process's VmHWM.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TASKS = {
    "package-sections": "package-sections.jsonl",
    "server-sections": "server-sections.jsonl",
    "wordnet-senses": "wordnet-senses.jsonl",
    "webster-fields": "webster-fields.jsonl",
    "foldoc-subjects": "foldoc-subjects.jsonl",
}
METHODS = ("loraops", "peft", "full", "loraops-qv")
# loraops-qv: PEFT's adapter (peft_recipe) in a task file, everything else loraops's defaults
PEFT_TARGETS = [
    "lora.r=8",
    "lora.alpha=16",
    "lora.dropout=0.1",
    "lora.target_modules=[query, value]",
    "training.lr=1e-3",
]
PEFT_LR = 1e-3
FULL_LR = 1e-4  # about a tenth of LoRA's rate (Schulman et al. 2025); BERT-size fine-tunes use 2e-5..1e-4


def task_file(work: Path, task: str, seed: int, quick: bool, settings: list[str] = ()) -> Path:
    """The minimal task file a user writes, plus the seed (in quick mode, a handful of steps) and any --set
    SECTION.FIELD=VALUE (a YAML value) to measure other settings beside the same anchors."""
    spec = {
        "task": task,
        "type": "classification",
        "data": {"path": str(ROOT / "examples" / "data" / TASKS[task])},
        "training": {"seed": seed, **({"max_steps": 4, "eval_every": 2} if quick else {})},
    }
    for setting in settings:
        key, _, value = setting.partition("=")
        section, _, name = key.partition(".")
        spec.setdefault(section, {})[name] = yaml.safe_load(value)
    path = work / f"{task}-{seed}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def peft_recipe(model):
    """PEFT's sequence-classification LoRA recipe on `model`: r=8, alpha=16, dropout 0.1 on query/value, the head
    saved (lr PEFT_LR). The anchor of this benchmark and of bench/training_cost.py."""
    import peft

    config = peft.LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.1,
        task_type="SEQ_CLS",
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
    )
    return peft.get_peft_model(model, config)


def child(method: str, task: str, seed: int, work: Path, quick: bool, settings: list[str] = ()) -> dict:
    """One training run in this process: {accuracy, macro_f1, seconds, peak, steps, trainable}."""
    import torch

    from bench.harness import peak_rss
    from pipelines import steps
    from pipelines.data import tokenize
    from pipelines.evaluation import classification_metrics, predict_logits
    from pipelines.models import load_model, resolve_base
    from pipelines.task_files import load_spec
    from pipelines.train import train

    torch.set_num_threads(2)
    given = {"loraops": settings, "loraops-qv": PEFT_TARGETS}.get(method, [])
    spec = load_spec(task_file(work, task, seed, quick, given))
    prepared = steps.prepare_data(spec, work / "data")
    base = resolve_base(spec.base)[0]
    if method.startswith("loraops"):
        result = steps.fit_adapter(spec, prepared, base, work / f"{method}-{task}-{seed}")
        metrics = steps.evaluate_adapter(spec, prepared, base, result.adapter, None).adapter
        return {
            **metrics,
            "seconds": result.seconds,
            "peak": peak_rss(),
            "steps": result.steps,
            "trainable": result.trainable,
        }
    torch.manual_seed(seed)
    model, tokenizer = load_model(base, "classification", prepared.labels)
    if method == "peft":
        model = peft_recipe(model)
    # no selection, so nothing held out: they train on loraops's train and validation splits (if any) together
    train_set = steps.read_split(prepared, "train") + (
        steps.read_split(prepared, "validation") if prepared.validation else []
    )
    n_steps = steps.total_steps(spec, len(train_set))
    train_tokens = tokenize(train_set, tokenizer, spec.training.max_length, prepared.labels)
    if quick:
        n_steps = 4
    started = time.perf_counter()
    train(
        model,
        lambda epoch: steps.make_batches(spec, train_tokens, seed + epoch),
        steps=n_steps,
        lr=PEFT_LR if method == "peft" else FULL_LR,
        device="cpu",
        bf16=False,
    )
    seconds = time.perf_counter() - started
    test_tokens = steps.split_tokens(spec, prepared, "test", tokenizer)
    logits, gold = predict_logits(model, steps.make_batches(spec, test_tokens, batch_size=64), "cpu")
    return {
        **classification_metrics(logits, gold),
        "seconds": seconds,
        "peak": peak_rss(),
        "steps": n_steps,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict]) -> dict:
    """{task: {method: {accuracy: (mean, std), macro_f1: (mean, std), seconds: (median, 0), ...}}}: quality as mean ±
    std over seeds; time, memory and steps as medians, so one run slowed by something else on the machine does
    not move them."""
    out: dict = {}
    for r in runs:
        out.setdefault(r["task"], {}).setdefault(r["method"], []).append(r)
    return {
        task: {
            method: {
                **{key: mean_std([r[key] for r in rows]) for key in ("accuracy", "macro_f1")},
                **{key: (statistics.median(r[key] for r in rows), 0.0) for key in ("seconds", "peak", "steps")},
            }
            for method, rows in by_method.items()
        }
        for task, by_method in out.items()
    }


def report(
    summary: dict,
    seeds: int,
    quick: bool,
    settings: list[str] = (),
    reused: dict[str, list[str]] | None = None,
    methods: list[str] = METHODS,
) -> str:
    from bench.__main__ import machine
    from pipelines.device import cpu_bf16
    from registry.code_version import code_version

    lines = [
        f"# Quality of the defaults ({'quick' if quick else 'full'} mode)",
        "",
        f"`python -m bench.quality{' --quick' if quick else ''} --seeds {seeds}"
        f"{'' if list(methods) == list(METHODS) else ' ' + ' '.join(['--methods', *methods])}"
        f"{''.join(f' --set {s}' for s in settings)}` at {code_version()}, on: {machine()}; "
        + ("native bf16 on this CPU." if cpu_bf16() else "no native bf16 on this CPU, so loraops trained in float32."),
        "",
        "Minimal task file (task, type, data) vs PEFT LoRA (r=8, alpha=16, query/value + head, lr 1e-3) vs full "
        f"fine-tuning (lr {FULL_LR:.0e}), same splits, batches and epochs; loraops-qv: the minimal task file with "
        "PEFT's adapter (r=8, alpha 16, dropout 0.1 on query/value, lr 1e-3), so train time compares at equal "
        "targets; loraops with its default precision "
        "(bf16 autocast where the CPU has native bf16, the LoRA update float32), the anchors in float32; mean ± std over "
        f"{seeds} seed(s); train time, peak RSS and steps are medians. "
        "Targets: loraops >= full fine-tuning - 1 point and >= PEFT; train time <= 1.1x PEFT at equal targets "
        "(loraops-qv), reported at the default targets too; peak <= PEFT."
        + "".join(
            f" The {method} runs are reused from {', '.join(sources)} (--reuse): accuracy, time and peak as that run "
            "measured them, on its machine."
            for method, sources in (reused or {}).items()
        ),
        "",
        "| task | method | test accuracy | macro-F1 | train time | peak RSS | steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, by_method in summary.items():
        for method in METHODS:
            m = by_method.get(method)
            if m:
                lines.append(
                    f"| {task} | {method}{' (reused)' if method in (reused or {}) else ''} | {100 * m['accuracy'][0]:.1f} ± {100 * m['accuracy'][1]:.1f} | "
                    f"{100 * m['macro_f1'][0]:.1f} ± {100 * m['macro_f1'][1]:.1f} | "
                    f"{m['seconds'][0]:.1f} s | {m['peak'][0] / 2**20:,.0f} MiB | {m['steps'][0]:.0f} |"
                )
    lines += [
        "",
        "| task | loraops - full (points) | loraops - PEFT (points) | time / PEFT | peak / PEFT | "
        "at equal targets: loraops-qv - PEFT (points) | time / PEFT | peak / PEFT |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def versus(m: dict, ours: str, key: str) -> str:
        return f"{m[ours][key][0] / m['peft'][key][0]:.2f}x" if ours in m else "-"

    for task, m in summary.items():
        if {"loraops", "peft", "full"} <= m.keys():
            equal = (
                f"{100 * (m['loraops-qv']['accuracy'][0] - m['peft']['accuracy'][0]):+.1f}"
                if "loraops-qv" in m
                else "-"
            )
            lines.append(
                f"| {task} | {100 * (m['loraops']['accuracy'][0] - m['full']['accuracy'][0]):+.1f} | "
                f"{100 * (m['loraops']['accuracy'][0] - m['peft']['accuracy'][0]):+.1f} | "
                f"{versus(m, 'loraops', 'seconds')} | {versus(m, 'loraops', 'peak')} | "
                f"{equal} | {versus(m, 'loraops-qv', 'seconds')} | {versus(m, 'loraops-qv', 'peak')} |"
            )
    return "\n".join(lines) + "\n"


def reused_runs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[dict]:
    """The runs of the methods not run now, each from the first --reuse file that holds all of them (same tasks and
    seeds, same mode), keeping where an earlier reuse took them from."""
    files = {}
    for name in args.reuse:
        previous = json.loads(Path(name).read_text())
        if previous["quick"] != args.quick:
            parser.error(f"{name} holds a {'quick' if previous['quick'] else 'full'} run; reuse one of this mode")
        files[name] = previous["runs"]
    runs = []
    for method in (m for m in METHODS if m not in args.methods):
        wanted = {(t, s) for t in args.tasks for s in range(args.seeds)}
        found = {
            name: [{"reused": name, **r} for r in earlier if r["method"] == method and (r["task"], r["seed"]) in wanted]
            for name, earlier in files.items()
        }
        whole = [name for name, held in found.items() if len(held) == len(wanted)]
        if not whole and method == "loraops-qv" and not any(found.values()):
            continue  # files from before it was measured: the report leaves its columns out
        if not whole:
            parser.error(f"no --reuse file holds all {len(wanted)} {method} runs of these tasks and seeds; run it too")
        runs += found[whole[0]]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quality")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="4 steps per run: the harness works, the numbers mean nothing"
    )
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument(
        "--methods",
        nargs="*",
        choices=METHODS,
        default=list(METHODS),
        help="the methods to run (none: QUALITY.md from the --reuse files' runs alone)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="a task-file setting for the loraops runs, e.g. lora.r=16 (repeatable)",
    )
    parser.add_argument(
        "--reuse",
        metavar="RESULTS",
        action="append",
        default=[],
        help="a quality-results.json whose runs of the methods not given to --methods (same tasks and seeds) join "
        "this run's, marked reused with the file and the commit they ran at (full fine-tuning's accuracy repeats to "
        "the digit on the same machine; another CPU's float32 kernels move it as another seed would); repeatable: "
        "each method is taken from the first file that holds all its runs",
    )
    parser.add_argument("--out", default=".")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    if not args.methods and not args.reuse:
        parser.error("--methods names none to run: give the runs to report with --reuse")
    import tempfile

    from bench.harness import in_child
    from registry.code_version import code_version

    work = Path(args.work or tempfile.mkdtemp(prefix="loraops-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = reused_runs(parser, args) if args.reuse else []
    reused: dict[str, list[str]] = {}
    for r in runs:
        source = f"{r['reused']} at {r.get('commit', 'a commit it did not record')}"
        sources = reused.setdefault(r["method"], [])
        if source not in sources:
            sources.append(source)
    commit = code_version()
    for seed in range(args.seeds):
        for task in args.tasks:
            for method in args.methods:
                result = in_child(
                    "bench.quality",
                    "--child",
                    method,
                    task,
                    str(seed),
                    str(work),
                    *(["--quick"] if args.quick else []),
                    *(f"--set={s}" for s in args.set),
                    env={"LORAOPS_HOME": str(work / "home")},
                )
                runs.append({"task": task, "method": method, "seed": seed, "commit": commit, **result})
                print(
                    f"{task} seed {seed} {method}: accuracy {result['accuracy']:.4f} in {result['seconds']:.1f} s "
                    f"({result['steps']} steps), peak {result['peak'] / 2**20:,.0f} MiB",
                    flush=True,
                )
                # the runs so far, kept if the whole does not finish
                (out / "quality-runs.partial.json").write_text(json.dumps({"quick": args.quick, "runs": runs}))
    (out / "quality-runs.partial.json").unlink(missing_ok=True)
    summary = summarize(runs)
    (out / "QUALITY.md").write_text(report(summary, args.seeds, args.quick, args.set, reused, args.methods))
    (out / "quality-results.json").write_text(
        json.dumps({"quick": args.quick, "runs": runs, "summary": summary}, indent=1)
    )
    print(f"wrote {out / 'QUALITY.md'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        method, task, seed, work = sys.argv[2:6]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        settings = [a.removeprefix("--set=") for a in sys.argv[6:] if a.startswith("--set=")]
        print(json.dumps(child(method, task, int(seed), Path(work), "--quick" in sys.argv, settings)))
    else:
        main()
