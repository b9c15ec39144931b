"""The fan-out case: six small tasks through `loraops run FOLDER` on the team stack (infra/stack.sh: two process
workers, the pool limited to two flow runs at once) vs the same six through `loraops run --local FOLDER` (one
process, one after another, on the same servers).

Both sides are whole commands on the same MLflow, Prefect and S3 servers, each on a fresh LORAOPS_HOME; the stack
is up before either starts. Each flow run on the pool is a fresh process (its imports are paid per task, the local
run pays them once); the pool runs two at a time, each run sized to its share of the cores (LORAOPS_CONCURRENT_RUNS).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from bench.cases import ROOT, row
from bench.harness import run_watched
from bench.servers import STACK_SH, new_stack, user_env

TASKS = 6
WORKERS = 2


def write_tasks(folder: Path, count: int, steps: int) -> Path:
    """`count` copies of the quickstart task under different names, `steps` optimizer steps each."""
    spec = yaml.safe_load((ROOT / "examples/tasks/package-sections.yaml").read_text())
    spec["data"] = {"path": str(ROOT / "examples/data/package-sections.jsonl"), "validation_fraction": 0}
    spec["training"] = {"max_steps": steps, "batch_size": 16, "max_length": 48, "device": "cpu"}
    spec["training"]["checkpoint_every"] = 1000
    spec["gate"] = {**spec.get("gate", {}), "min_gain_over_base": -1.0}  # few steps: the path is measured, not the gain
    spec["promotion"] = {"mode": "adapter"}
    tasks = folder / "tasks"
    tasks.mkdir(parents=True)
    for i in range(count):
        (tasks / f"fan-{i}.yaml").write_text(yaml.safe_dump({**spec, "task": f"fan-{i}"}))
    return tasks


def fan_out(quick: bool, home: Path) -> list[dict]:
    folder = home / "fanout"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tasks = write_tasks(folder, TASKS, 4 if quick else 40)
    stack_dir, _, stack_env = new_stack(
        LORAOPS_WORKERS=str(WORKERS), LORAOPS_CONCURRENT_RUNS="1", LORAOPS_POOL_LIMIT=str(WORKERS)
    )
    stack = ["bash", str(STACK_SH)]
    loraops = str(Path(sys.executable).parent / "loraops")
    try:
        up = subprocess.run([*stack, "up"], env=stack_env, capture_output=True, text=True, timeout=600)
        if up.returncode:
            raise RuntimeError(f"the stack did not start: {up.stderr[-2000:]}")

        def timed(name: str, *flags: str) -> float:
            done = run_watched([loraops, "run", *flags, str(tasks)], env=user_env(stack_env, stack_dir, folder / name))
            if done["returncode"]:
                raise RuntimeError(f"loraops run {' '.join(flags)} failed:\n{done['output'][-3000:]}")
            return done["seconds"]

        local = timed("local", "--local")  # first: a cache it warms helps the pool side, not this one
        pool = timed("pool")
    finally:
        subprocess.run([*stack, "down"], env=stack_env, capture_output=True, timeout=300)
        shutil.rmtree(stack_dir, ignore_errors=True)
    return [
        row(
            f"fan-out: {TASKS} quickstart tasks on {WORKERS} workers (pool limit {WORKERS}) vs one process (s)",
            pool,
            local,
            "s",
            "<= 0.6x one process",
            f"`loraops run FOLDER` on infra/stack.sh vs `loraops run --local FOLDER`, same servers, "
            f"{yaml.safe_load((tasks / 'fan-0.yaml').read_text())['training']['max_steps']} steps each; "
            f"{os.cpu_count()} cores shared by both flow runs at once",
        )
    ]
