"""Training under torchrun (DDP) when training.nproc > 1 or training.nnodes > 1: rank 0 logs and saves.

One node: `python -m torch.distributed.run --standalone --nproc-per-node=P -m pipelines.distributed LAUNCH.json`.
Several nodes: the flow's node hosts the c10d rendezvous (at $LORAOPS_RDZV_ENDPOINT, default this host's address,
port 29400) and writes LAUNCH.json into the shared $LORAOPS_HOME; `loraops train-node` on each other node finds it
there and runs the same torchrun command as a guest of that rendezvous. Every worker runs `steps.fit_adapter`
inside one process group (NCCL on GPUs, Gloo on CPU). Multi-node needs $LORAOPS_HOME (work folders, prepared data)
and the base folder on storage that every node mounts at the same path.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict

from registry import AdapterRegistry
from registry.settings import RegistrySettings

from . import steps, tracking
from .errors import TorchrunError, TrainingNodeError
from .results import PreparedData, TrainedAdapter
from .spec import TaskSpec
from .threads import size_threads, thread_env, use_threads

RDZV_PORT = 29400


class Launch(BaseModel):
    """launch.json: everything a torchrun worker needs, so it reads no settings of its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    spec: dict[str, object]  # the task as written (exclude_unset): checks of what the user set see the same again
    source: str
    prepared: PreparedData
    base_path: str
    work: str
    run_id: str
    nnodes: int
    nproc: int
    endpoint: str
    settings: RegistrySettings  # where the worker of rank 0 logs the run


def pending_dir(home: Path) -> Path:
    """Where the flow's node announces multi-node runs for `loraops train-node` to join."""
    return home / "nodes" / "pending"


def rendezvous_endpoint() -> str:
    return os.environ.get("LORAOPS_RDZV_ENDPOINT") or f"{socket.gethostbyname(socket.gethostname())}:{RDZV_PORT}"


def torchrun_command(launch: Launch, launch_path: Path, host: bool) -> list[str]:
    if launch.nnodes == 1:
        rendezvous = ["--standalone"]
    else:
        # is_host is explicit: two nodes on one machine (tests, or a fat node) would both guess they host the store
        rendezvous = [
            f"--nnodes={launch.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={launch.endpoint}",
            f"--rdzv-id={launch.run_id}",
            f"--rdzv-conf=is_host={int(host)},join_timeout=900",
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous,
        f"--nproc-per-node={launch.nproc}",
        "-m",
        "pipelines.distributed",
        str(launch_path),
    ]


def worker_env(explicit: int | None, nproc: int) -> dict[str, str]:
    """torchrun's environment: each of the node's `nproc` workers gets its share of the CPUs in the variables its
    pools read as they start (torchrun's own default of 1 thread applies only where OMP_NUM_THREADS is unset)."""
    sized = size_threads(explicit, env={**os.environ, "LOCAL_WORLD_SIZE": str(nproc)})
    return {**os.environ, **thread_env(sized.threads)}


def train_with_torchrun(
    spec: TaskSpec, prepared: PreparedData, base_path: Path, work: Path, run_id: str, settings: RegistrySettings
) -> TrainedAdapter:
    """The flow's side: launch torchrun on this node (the rendezvous host) and wait for the trained adapter."""
    work.mkdir(parents=True, exist_ok=True)
    launch = Launch(
        spec=spec.model_dump(mode="json", exclude_unset=True),
        source=str(spec.source),
        prepared=prepared,
        base_path=str(base_path),
        work=str(work),
        run_id=run_id,
        nnodes=spec.training.nnodes,
        nproc=spec.training.nproc,
        endpoint=rendezvous_endpoint(),
        settings=settings,
    )
    launch_path = work / "launch.json"
    launch_path.write_text(launch.model_dump_json())
    announce = pending_dir(settings.home) / f"{run_id}.json"
    if spec.training.nnodes > 1:
        announce.parent.mkdir(parents=True, exist_ok=True)
        written = announce.with_suffix(".tmp")  # a joining node never reads half a file (it globs *.json)
        written.write_text(json.dumps({"launch": str(launch_path)}))
        os.replace(written, announce)
        print(
            f"{spec.task}: waiting for {spec.training.nnodes - 1} more node(s) at {launch.endpoint} "
            f"(run `loraops train-node` on each, with this LORAOPS_HOME mounted)"
        )
    try:
        done = subprocess.run(
            torchrun_command(launch, launch_path, host=True), env=worker_env(spec.training.threads, launch.nproc)
        )
    finally:
        announce.unlink(missing_ok=True)
    if done.returncode != 0:
        raise TorchrunError(
            f"torchrun exited with {done.returncode} ({spec.training.nproc} process(es) x "
            f"{spec.training.nnodes} node(s)); see the worker output above"
        )
    return TrainedAdapter.model_validate_json((work / "train.json").read_text())


def announced_runs(home: Path) -> list[Path]:
    """The multi-node runs waiting for nodes, oldest first; one whose host ended it while listed is left out."""
    found = []
    for path in pending_dir(home).glob("*.json"):
        try:
            found.append((path.stat().st_mtime, path))
        except FileNotFoundError:
            continue
    return [path for _, path in sorted(found)]


def join_runs(home: Path, once: bool, wait: float | None, poll: float = 1.0) -> int:
    """A guest node: join each announced multi-node run, oldest first, one at a time. Returns the runs joined.
    `once`: stop after one run; `wait`: give up after that many seconds with nothing to join."""
    seen: set[str] = set()
    joined = 0
    idle_since = time.monotonic()
    while True:
        fresh = [p for p in announced_runs(home) if p.stem not in seen]
        if fresh:
            seen.add(fresh[0].stem)
            try:
                launch = Path(json.loads(fresh[0].read_text())["launch"])
            except FileNotFoundError:
                continue  # the run ended (its host removed the file) between the listing and the read
            join_run(launch)
            joined += 1
            if once:
                return joined
            idle_since = time.monotonic()
        elif wait is not None and time.monotonic() - idle_since > wait:
            if not joined:
                raise TrainingNodeError(
                    f"no multi-node run was announced under {pending_dir(home)} in {wait:g} s; "
                    f"start one with training.nnodes > 1 on the same LORAOPS_HOME"
                )
            return joined
        else:
            time.sleep(poll)


def join_run(launch_path: Path) -> None:
    try:
        launch = Launch.model_validate_json(launch_path.read_text())
    except FileNotFoundError:
        raise TrainingNodeError(
            f"{launch_path} is not visible on this node; mount the flow's LORAOPS_HOME at the same path on every node"
        ) from None
    print(f"joining run {launch.run_id} at {launch.endpoint} ({launch.nnodes} nodes x {launch.nproc})")
    explicit = TaskSpec.model_validate({**launch.spec, "source": launch.source}).training.threads
    done = subprocess.run(torchrun_command(launch, launch_path, host=False), env=worker_env(explicit, launch.nproc))
    if done.returncode != 0:
        raise TrainingNodeError(f"torchrun exited with {done.returncode} in run {launch.run_id}; see the output above")


def main(launch_path: str) -> None:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        launch = Launch.model_validate_json(Path(launch_path).read_text())
        spec = TaskSpec.model_validate({**launch.spec, "source": launch.source})
        use_threads(spec.training.threads)  # this node's CPUs / (runs x LOCAL_WORLD_SIZE), before the model loads
        log = tracking.StepLog(AdapterRegistry(launch.settings).runs, launch.run_id) if dist.get_rank() == 0 else None
        steps.fit_adapter(
            spec, launch.prepared, Path(launch.base_path), Path(launch.work), log, log.validation if log else None
        )
        if log:
            log.flush()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
