"""What a search buys and costs on the real tasks: `loraops tune` with N trials (default 12) against one default
`loraops run`, on the same minimal task file bench.quality writes, each in a fresh process and a fresh home.

    python -m bench.tuning [--tasks ...] [--trials 12] [--seed 0] [--anchors quality-results.json] [--out DIR]

Reported per task: the shipped version's test accuracy (the gate's evaluation, on the test split no trial saw)
after the default run and after the search, the search's trials (complete, pruned) and best parameters, and the
wall time of each command (the search's trials run one after another here: a pool runs them side by side,
docs/tuning.md), and each side's validation accuracy (what the search selects on). With --anchors
(bench.quality's results), full fine-tuning's 3-seed mean stands beside them, and the gap to it is the search's.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from bench.quality import TASKS, task_file

QUICK_SEARCH = 'training.search={"space": {"lr": [0.0001, 0.01]}}'  # quick: steps stay 4 (epochs unsearched)
QUICK_GATE = "gate.min_gain_over_base=-1"  # quick: 4 steps need not beat the base to ship


def child(kind: str, task: str, seed: int, work: Path, trials: int, quick: bool) -> dict:
    """`loraops run` (kind run) or `loraops tune --trials N` (kind tune) of the task, here, in this home."""
    import torch

    from pipelines.cli.run import run
    from pipelines.cli.tune import tune
    from pipelines.results import FlowResult

    torch.set_num_threads(2)
    quick_settings = [QUICK_GATE, *([QUICK_SEARCH] if kind == "tune" else [])]
    path = task_file(work, task, seed, quick, quick_settings if quick else [])
    lines: list[str] = []
    started = time.perf_counter()
    if kind == "run":
        result = run([str(path)], print_=lines.append, local=True)[0]
    else:
        result = tune(str(path), trials, None, local=True, print_=lines.append)
    seconds = time.perf_counter() - started
    assert isinstance(result, FlowResult)
    found, kept = result.search, result.trained.best_validation
    return {
        "accuracy": result.evaluation.adapter["accuracy"],
        # what the search selects on: the best trial's (a refit has no split); a default run's kept weights'
        "validation": found.best_value if found else (kept.metrics.get("accuracy") if kept else None),
        "refit": found.refit if found else False,
        "seconds": seconds,
        "train_seconds": result.trained.seconds,
        "trials": found.trials if found else 0,
        "complete": found.complete if found else 0,
        "pruned": found.pruned if found else 0,
        "best_params": found.best_params if found else {},
        "lines": lines,
    }


def full_fine_tuning(path: str | None) -> dict[str, float]:
    """{task: full fine-tuning's mean test accuracy} from bench.quality's results, or nothing."""
    if not path:
        return {}
    summary = json.loads(Path(path).read_text())["summary"]
    return {task: by["full"]["accuracy"][0] for task, by in summary.items() if "full" in by}


def report(rows: list[dict], trials: int, quick: bool, quality: dict[str, float]) -> str:
    from bench.__main__ import machine
    from registry.code_version import code_version

    lines = [
        f"# A search's worth ({'quick' if quick else 'full'} mode)",
        "",
        f"`python -m bench.tuning --trials {trials}` at {code_version()}, on: {machine()}. One seed; the search's "
        "trials one after another in one process. Accuracy: the shipped version's, on the test split. A search "
        "ships its best trial's settings trained again on all the training data (training.search.refit, marked r); "
        "its validation column is the best trial's, on the split the trials were scored on.",
        "",
        "| task | default run | tuned | validation: run / tuned | trials (complete / pruned) | best parameters | "
        "time: tune / run | full FT (3 seeds) | tuned - full |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        run, tuned, full = r["run"], r["tune"], quality.get(r["task"])
        params = ", ".join(f"{k}={v:.3g}" for k, v in tuned["best_params"].items())
        gap = f"{100 * (tuned['accuracy'] - full):+.1f}" if full is not None else "-"
        validation = " / ".join(
            "-" if s.get("validation") is None else f"{100 * s['validation']:.1f}" for s in (run, tuned)
        )
        lines.append(
            f"| {r['task']} | {100 * run['accuracy']:.1f} ({run['seconds']:.0f} s) | {100 * tuned['accuracy']:.1f}"
            f"{' r' if tuned.get('refit') else ''} ({tuned['seconds']:.0f} s) | {validation} | {tuned['trials']} ({tuned['complete']} / {tuned['pruned']}) "
            f"| {params} | {tuned['seconds'] / run['seconds']:.1f}x | {'-' if full is None else f'{100 * full:.1f}'} "
            f"| {gap} |"
        )
    gains = [r["tune"]["accuracy"] - r["run"]["accuracy"] for r in rows]
    if gains:
        lines += [
            "",
            f"Mean change from the search: {100 * statistics.mean(gains):+.1f} points over {len(gains)} task(s).",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    import tempfile

    from bench.harness import in_child

    parser = argparse.ArgumentParser(prog="python -m bench.tuning")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="4 steps per trial: the harness works, nothing more")
    parser.add_argument("--anchors", help="bench.quality's quality-results.json: full fine-tuning beside the search")
    parser.add_argument("--out", default=".")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="loraops-tuning-"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for task in args.tasks:
        row: dict = {"task": task}
        for kind in ("run", "tune"):
            home = work / f"{task}-{kind}"
            home.mkdir(parents=True, exist_ok=True)
            row[kind] = in_child(
                "bench.tuning",
                "--child",
                kind,
                task,
                str(args.seed),
                str(home),
                str(args.trials),
                *(["--quick"] if args.quick else []),
                env={"LORAOPS_HOME": str(home / "home")},
            )
            print(f"{task} {kind}: accuracy {row[kind]['accuracy']:.4f} in {row[kind]['seconds']:.0f} s", flush=True)
        rows.append(row)
        (out / "tuning-results.json").write_text(json.dumps({"quick": args.quick, "rows": rows}, indent=1))
    (out / "TUNING.md").write_text(report(rows, args.trials, args.quick, full_fine_tuning(args.anchors)))
    print(f"wrote {out / 'TUNING.md'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, task, seed, work, trials = sys.argv[2:7]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "LORAOPS_PROMOTION_TARGET"):  # local, in its own home
            os.environ.pop(name, None)
        result = child(kind, task, int(seed), Path(work), int(trials), "--quick" in sys.argv)
        print(json.dumps(result))
    else:
        main()
