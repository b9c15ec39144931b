"""The concurrent-runs case: N training processes of one small task started at once, their threads sized by
pipelines/threads.py (LORAOPS_CONCURRENT_RUNS=N, as a worker with --limit N sets it) or left at torch's default.

Each process loads everything, says it is ready, and trains when all N are (a barrier on stdin), so the N trainings
overlap from their first step. Target: N runs at once take about N x one run alone each, no more; oversubscribed
OpenMP threads spin while they wait, which makes N runs far slower than that.

On a machine shared with other work, anything else running only adds time: each figure is the fastest of the
repeats, and its note says how much of the CPUs other processes used meanwhile (/proc/stat less the trainings' own).

The child: `python -m bench.concurrent TASK PREPARED.json WORK MODE` (MODE: sized | default).
"""

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from bench.cases import ROOT, row
from pipelines.threads import POOL_VARIABLES, RUNS_VARIABLE

MODES = ("sized", "default")


def write_task(folder: Path, quick: bool) -> Path:
    """The quickstart's package-sections task, short: a fixed number of steps, no validation passes."""
    spec = yaml.safe_load((ROOT / "examples/tasks/package-sections.yaml").read_text())
    spec["data"] = {"path": str(ROOT / "examples/data/package-sections.jsonl"), "validation_fraction": 0}
    spec["training"] = {"max_steps": 2 if quick else 10, "batch_size": 8 if quick else 16, "max_length": 48}
    spec["training"] |= {"device": "cpu", "checkpoint_every": 1000}
    spec["promotion"] = {"mode": "adapter"}
    path = folder / "concurrent.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start_together(n: int, mode: str, task: Path, prepared: Path, work: Path) -> dict:
    """N children of `mode` at once; each trains when all are loaded. Returns their mean seconds per run, their
    threads, and the share of the CPUs that other processes used meanwhile."""
    env = {k: v for k, v in os.environ.items() if k not in (*POOL_VARIABLES, "TOKENIZERS_PARALLELISM", RUNS_VARIABLE)}
    if mode == "sized":
        env[RUNS_VARIABLE] = str(n)
    folders = [work / f"{mode}-{n}-{i}" for i in range(n)]
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)  # no checkpoint of an earlier repeat to resume from
        folder.mkdir(parents=True)
    logs = [open(folder / "stderr.log", "w") for folder in folders]
    try:
        children = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.concurrent", str(task), str(prepared), str(folder), mode],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
            for folder, log in zip(folders, logs)
        ]
        loading = 0.0  # CPU seconds the children spent before the barrier
        for child, folder in zip(children, folders):
            assert child.stdout and child.stdin
            said = child.stdout.readline().split()
            if not said or said[0] != "ready":
                raise RuntimeError(f"a {mode} training process did not start:\n{tail(folder)}")
            loading += float(said[1])
        busy, started = busy_seconds(), time.perf_counter()
        for child in children:  # the barrier: all loaded, now all train
            assert child.stdin
            child.stdin.write("go\n")
            child.stdin.flush()
        results, used = [], -loading
        for child, folder in zip(children, folders):
            assert child.stdout
            out = child.stdout.read()
            _, status, usage = os.wait4(child.pid, 0)  # the child's whole CPU time, its exit included
            child.returncode = os.waitstatus_to_exitcode(status)
            if child.returncode:
                raise RuntimeError(f"a {mode} training process failed (exit {child.returncode}):\n{tail(folder)}")
            results.append(json.loads(out.strip().splitlines()[-1]))
            used += usage.ru_utime + usage.ru_stime
        others = busy_seconds() - busy - used
        share = max(0.0, others) / ((time.perf_counter() - started) * (os.cpu_count() or 1))
    finally:
        for log in logs:
            log.close()
    return {
        "seconds": statistics.mean(r["seconds"] for r in results),
        "threads": results[0]["threads"],
        "others": share,
    }


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every process), from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle and iowait


def tail(folder: Path) -> str:
    return (folder / "stderr.log").read_text()[-2000:]


def concurrent_runs(quick: bool, home: Path) -> list[dict]:
    from pipelines import steps
    from pipelines.task_files import load_spec

    folder = home / "concurrent"
    folder.mkdir(parents=True, exist_ok=True)
    task = write_task(folder, quick)
    prepared = folder / "prepared.json"
    prepared.write_text(steps.prepare_data(load_spec(task), folder / "work").model_dump_json())
    counts, repeats = ((1, 2), 1) if quick else ((1, 2, 3), 3)
    measured: dict[tuple[str, int], list[dict]] = {}
    for _ in range(repeats):  # interleaved: drift on the machine hits both modes alike
        for n in counts:
            for mode in MODES:
                measured.setdefault((mode, n), []).append(start_together(n, mode, task, prepared, folder / "runs"))
    fastest = {key: min(found, key=lambda m: m["seconds"]) for key, found in measured.items()}
    per_run = {key: m["seconds"] for key, m in fastest.items()}
    threads = {key: m["threads"] for key, m in fastest.items()}

    def others(*keys: tuple[str, int]) -> str:
        return "others used " + "/".join(f"{fastest[k]['others']:.0%}" for k in keys) + " of the CPUs meanwhile"

    alone = {mode: per_run[mode, 1] for mode in MODES}
    rows = [
        row(
            "concurrent runs: one training process alone, threads sized vs torch's default (s)",
            alone["sized"],
            alone["default"],
            "s",
            "<= 1.05x torch default",
            f"{threads['sized', 1]} threads sized, {threads['default', 1]} by default; quickstart task, "
            f"{load_spec(task).training.max_steps} steps; fastest of {repeats}; {others(('sized', 1), ('default', 1))}",
        )
    ]
    for n in counts[1:]:
        rows += [
            row(
                f"concurrent runs: {n} training processes at once, threads sized: wall time per run (s)",
                per_run["sized", n],
                n * alone["sized"],
                "s",
                f"<= 1.1x ({n} x one run alone)",
                f"{threads['sized', n]} thread(s) each (LORAOPS_CONCURRENT_RUNS={n}); anchor = {n} x one run alone; "
                + others(("sized", n), ("sized", 1)),
            ),
            row(
                "  same, torch's default threads (before sizing): wall time per run (s)",
                per_run["default", n],
                n * alone["default"],
                "s",
                "report",
                f"{threads['default', n]} threads each; anchor = {n} x one run alone; "
                + others(("default", n), ("default", 1)),
            ),
        ]
    return rows


def child(task: str, prepared_json: str, work: str, mode: str) -> None:
    from pipelines import steps
    from pipelines.models import resolve_base
    from pipelines.results import PreparedData
    from pipelines.task_files import load_spec
    from pipelines.threads import use_threads

    spec = load_spec(task)
    if mode == "sized":
        use_threads(spec.training.threads)  # as the flow does at its start
    import torch

    prepared = PreparedData.model_validate_json(Path(prepared_json).read_text())
    base_path, _ = resolve_base(spec.base)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print("ready", usage.ru_utime + usage.ru_stime, flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    steps.fit_adapter(spec, prepared, base_path, Path(work))
    print(json.dumps({"seconds": time.perf_counter() - started, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    child(*sys.argv[1:])
