"""Training under torchrun (DDP) when training.nproc > 1: rank 0 logs and saves.

`train_with_torchrun` launches `python -m torch.distributed.run ... -m pipelines.distributed`;
each worker runs the same `steps.train_adapter` inside a process group (NCCL on GPUs, Gloo on CPU).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from registry import AdapterRegistry

from . import steps, tracking
from .spec import TaskSpec, load_spec


def train_with_torchrun(spec: TaskSpec, prepared: dict, base_path: Path, work: Path, run_id: str) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    (work / "prepared.json").write_text(json.dumps(prepared))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={spec.training.nproc}",
               "-m", "pipelines.distributed", str(spec.source), str(work / "prepared.json"), str(base_path), str(work), run_id]
    done = subprocess.run(command)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun exited with {done.returncode}; see the worker output above")
    return json.loads((work / "train.json").read_text())


def main(spec_path: str, prepared_path: str, base_path: str, work: str, run_id: str) -> None:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        spec = load_spec(spec_path)
        log = tracking.StepLog(AdapterRegistry(), run_id) if dist.get_rank() == 0 else None
        steps.train_adapter(spec, json.loads(Path(prepared_path).read_text()), Path(base_path), Path(work), log)
        if log:
            log.flush()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:6])
