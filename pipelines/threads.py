"""How many threads a run's torch (and BLAS, OpenMP, tokenizers) may use: the CPUs this process is given, shared.

CPUs given = min(cgroup CPU quota, the scheduler affinity mask); never the host's `os.cpu_count()` alone, which in a
container or a pinned process counts CPUs the run cannot use. They are divided by the runs that share them
(LORAOPS_CONCURRENT_RUNS: a process worker's `--limit`; infra/stack.sh sets both) and by the training processes of
one run on this node (torchrun's LOCAL_WORLD_SIZE), never below 1. `training.threads` in the task file wins.

Oversubscription is not gentle: OpenMP threads spin while they wait, so three runs of 2 threads each on 2 cores ran
12.7x slower each instead of 3x (bench/concurrent.py measures it).
"""

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from .errors import SettingError

CGROUP_ROOT = Path("/sys/fs/cgroup")
RUNS_VARIABLE = "LORAOPS_CONCURRENT_RUNS"
MAX_RUNS = 1024
# Each reads its own variable when its pool starts: OpenMP (torch's intra-op pool), MKL, OpenBLAS, and the Rust
# thread pool of Hugging Face tokenizers.
POOL_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")


class Threads(NamedTuple):
    """`threads` per training process, and `reason`: how they were counted, for the run's MLflow tag."""

    threads: int
    reason: str


def quota_cpus(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("QUOTA PERIOD", QUOTA "max" = no limit) as CPUs; None without a limit."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return cfs_cpus(parts[0], parts[1])


def cfs_cpus(quota: str, period: str) -> float | None:
    """cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us as CPUs; None without a limit (quota -1)."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def own_groups(membership: str) -> dict[str, str]:
    """/proc/self/cgroup ("ID:CONTROLLERS:PATH" lines) as {"v2" or a v1 controller: the process's cgroup path}."""
    groups = {}
    for line in membership.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3:
            _, controllers, path = parts
            for controller in controllers.split(",") if controllers else ["v2"]:
                groups[controller] = path
    return groups


def ancestry(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder and each parent up to the mount: a parent's limit applies to its children too. A path
    not under the mount (a container sees its own cgroup as the mount's root) leaves the mount alone."""
    folder = mount / path.lstrip("/")
    if ".." in Path(path).parts or not folder.is_dir():
        return [mount]
    return [folder, *[p for p in folder.parents if p.is_relative_to(mount)]]


def cgroup_cpus(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """The smallest CPU quota over this process's cgroups (v2 cpu.max, v1 cfs quota), or None when unlimited.
    `root`: where the cgroup file systems are mounted; `membership`: /proc/self/cgroup's text (read when None)."""
    groups = own_groups(read(Path("/proc/self/cgroup")) if membership is None else membership)
    found = []
    for mount in (root, root / "unified"):  # v2 alone, or beside v1 ("hybrid")
        found += [quota_cpus(read(f / "cpu.max")) for f in ancestry(mount, groups.get("v2", "/"))]
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (root / name).is_dir():
            for f in ancestry(root / name, groups.get("cpu", "/")):
                found.append(cfs_cpus(read(f / "cpu.cfs_quota_us"), read(f / "cpu.cfs_period_us")))
    return min((cpus for cpus in found if cpus is not None), default=None)


def read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def affinity_cpus() -> int:
    """CPUs the scheduler lets this process run on (taskset, cpuset, a Kubernetes static CPU policy)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def concurrent_runs(env: Mapping[str, str]) -> int:
    """LORAOPS_CONCURRENT_RUNS: how many runs share this machine's CPUs (the worker's --limit); default 1."""
    raw = env.get(RUNS_VARIABLE, "").strip()
    if not raw:
        return 1
    try:
        runs = int(raw)
    except ValueError:
        runs = 0
    if not 1 <= runs <= MAX_RUNS:
        raise SettingError(
            f"{RUNS_VARIABLE}={raw!r} is not a whole number of runs from 1 to {MAX_RUNS}; set it to the work "
            f"pool worker's --limit (the runs that share this machine's CPUs), or unset it for 1"
        )
    return runs


def size_threads(
    explicit: int | None = None,
    env: Mapping[str, str] | None = None,
    cgroup_root: Path = CGROUP_ROOT,
    membership: str | None = None,
    affinity: int | None = None,
) -> Threads:
    """Threads per training process: `explicit` (training.threads) if given, else the CPUs given (cgroup quota,
    affinity: the smaller) // (LORAOPS_CONCURRENT_RUNS x torchrun's LOCAL_WORLD_SIZE), at least 1."""
    env = os.environ if env is None else env
    if explicit is not None:
        return Threads(explicit, f"training.threads = {explicit}")
    runs = concurrent_runs(env)
    cpus = float(affinity if affinity is not None else affinity_cpus())
    source = "affinity"
    quota = cgroup_cpus(cgroup_root, membership)
    if quota is not None and quota < cpus:
        cpus, source = quota, "cgroup quota"
    processes = max(1, int(env.get("LOCAL_WORLD_SIZE") or 1))
    # A fractional share (1.5 CPUs) rounds down: a thread the quota cannot feed is throttled mid-step.
    threads = max(1, math.floor(cpus / (runs * processes)))
    per = f"{runs} run{'s' if runs > 1 else ''}" + (f" x {processes} processes" if processes > 1 else "")
    return Threads(threads, f"{cpus:g} CPUs ({source}) / {per}")


def thread_env(threads: int) -> dict[str, str]:
    """The variables that size each library's pool to `threads`, for this process or a child's environment."""
    # One thread: tokenizers stay serial. More: RAYON_NUM_THREADS caps their pool, and TOKENIZERS_PARALLELISM is
    # left to tokenizers, which turn it off in a forked child (forcing it on there can deadlock).
    serial = {"TOKENIZERS_PARALLELISM": "false"} if threads == 1 else {}
    return {name: str(threads) for name in POOL_VARIABLES} | serial


def apply_threads(sized: Threads) -> Threads:
    """Size the pools: the variables (read by pools not started yet, and by child processes) and torch's own."""
    os.environ.update(thread_env(sized.threads))
    import torch

    torch.set_num_threads(sized.threads)
    try:
        torch.set_num_interop_threads(sized.threads)
    except RuntimeError:  # settable once, before any inter-op work: a second run in this process keeps the first
        pass
    return sized


def use_threads(explicit: int | None = None) -> Threads:
    """Size and apply this process's threads from its settings; returns what was chosen and why."""
    return apply_threads(size_threads(explicit))
