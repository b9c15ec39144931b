"""A run's threads: the CPUs its process is given (cgroup quota, affinity), shared by the runs beside it, applied to
torch and the pools' variables, recorded on the MLflow run."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from pipelines import threads as threads_module
from pipelines.errors import InputError, SettingError, SpecError
from pipelines.task_files import load_spec
from pipelines.threads import Threads, affinity_cpus, cgroup_cpus, size_threads, thread_env


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_a_cgroup_v2_quota_counts_as_its_share_of_cpus(tmp_path):
    write(tmp_path / "cpu.max", "150000 100000")
    assert cgroup_cpus(tmp_path, "0::/\n") == 1.5


def test_no_cgroup_limit_is_no_quota(tmp_path):
    write(tmp_path / "cpu.max", "max 100000")
    assert cgroup_cpus(tmp_path, "0::/\n") is None
    assert cgroup_cpus(tmp_path / "no-cgroup-fs", "") is None


def test_a_parents_smaller_quota_limits_its_child(tmp_path):
    write(tmp_path / "kubepods" / "cpu.max", "100000 100000")
    write(tmp_path / "kubepods" / "pod1" / "cpu.max", "400000 100000")
    assert cgroup_cpus(tmp_path, "0::/kubepods/pod1\n") == 1.0


def test_a_container_that_sees_its_cgroup_as_the_root_reads_the_root(tmp_path):
    write(tmp_path / "cpu.max", "200000 100000")  # the namespaced path is not under the mount
    assert cgroup_cpus(tmp_path, "0::/../../system.slice/docker-1.scope\n") == 2.0


def test_a_cgroup_v1_cfs_quota_counts_as_its_share_of_cpus(tmp_path):
    group = tmp_path / "cpu,cpuacct" / "docker" / "abc"
    write(group / "cpu.cfs_quota_us", "300000")
    write(group / "cpu.cfs_period_us", "100000")
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1")  # the v1 root: unlimited
    write(tmp_path / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpus(tmp_path, "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n") == 3.0


def test_the_smaller_of_v2_beside_v1_and_v1_counts(tmp_path):
    write(tmp_path / "unified" / "cpu.max", "250000 100000")
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "500000")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpus(tmp_path, "1:cpu:/\n0::/\n") == 2.5


def test_the_quota_wins_when_it_is_below_the_affinity(tmp_path):
    write(tmp_path / "cpu.max", "200000 100000")
    assert size_threads(env={}, cgroup_root=tmp_path, membership="0::/", affinity=8) == Threads(
        2, "2 CPUs (cgroup quota) / 1 run"
    )


def test_the_affinity_wins_when_it_is_below_the_quota(tmp_path):
    write(tmp_path / "cpu.max", "400000 100000")
    assert size_threads(env={}, cgroup_root=tmp_path, membership="0::/", affinity=3) == Threads(
        3, "3 CPUs (affinity) / 1 run"
    )


def test_a_fractional_quota_rounds_down_never_below_one(tmp_path):
    write(tmp_path / "cpu.max", "350000 100000")
    assert size_threads(env={}, cgroup_root=tmp_path, membership="0::/", affinity=8).threads == 3
    write(tmp_path / "cpu.max", "50000 100000")
    assert size_threads(env={}, cgroup_root=tmp_path, membership="0::/", affinity=8).threads == 1


def test_the_affinity_is_the_cpus_this_process_may_run_on():
    before = os.sched_getaffinity(0)
    assert affinity_cpus() == len(before)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert affinity_cpus() == 1
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.parametrize(
    ("cpus", "runs", "expected"), [(8, "1", 8), (8, "2", 4), (8, "3", 2), (2, "3", 1), (1, "4", 1)]
)
def test_concurrent_runs_share_the_cpus_with_at_least_one_thread_each(tmp_path, cpus, runs, expected):
    sized = size_threads(env={"LORAOPS_CONCURRENT_RUNS": runs}, cgroup_root=tmp_path, membership="", affinity=cpus)
    assert sized.threads == expected
    assert sized.reason == f"{cpus} CPUs (affinity) / {runs} run{'s' if runs != '1' else ''}"


def test_torchrun_workers_of_one_run_share_its_cpus_too(tmp_path):
    env = {"LORAOPS_CONCURRENT_RUNS": "2", "LOCAL_WORLD_SIZE": "2"}
    assert size_threads(env=env, cgroup_root=tmp_path, membership="", affinity=16) == Threads(
        4, "16 CPUs (affinity) / 2 runs x 2 processes"
    )


def test_explicit_training_threads_win_over_the_count(tmp_path):
    env = {"LORAOPS_CONCURRENT_RUNS": "3"}
    assert size_threads(5, env=env, cgroup_root=tmp_path, membership="", affinity=2) == Threads(
        5, "training.threads = 5"
    )


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", "1025"])
def test_a_bad_concurrent_runs_value_is_one_line_naming_the_variable_and_the_fix(tmp_path, value):
    with pytest.raises(SettingError) as raised:
        size_threads(env={"LORAOPS_CONCURRENT_RUNS": value}, cgroup_root=tmp_path, membership="", affinity=2)
    message = str(raised.value)
    assert isinstance(raised.value, InputError) and "\n" not in message
    assert message.startswith(f"LORAOPS_CONCURRENT_RUNS={value!r}") and "--limit" in message and "unset it" in message


def test_an_unset_or_empty_concurrent_runs_is_one_run(tmp_path):
    for env in ({}, {"LORAOPS_CONCURRENT_RUNS": ""}):
        assert size_threads(env=env, cgroup_root=tmp_path, membership="", affinity=4).threads == 4


def test_the_pool_variables_carry_the_count_and_one_thread_keeps_tokenizers_serial():
    assert thread_env(3) == {
        "OMP_NUM_THREADS": "3",
        "MKL_NUM_THREADS": "3",
        "OPENBLAS_NUM_THREADS": "3",
        "RAYON_NUM_THREADS": "3",
    }
    assert thread_env(1)["TOKENIZERS_PARALLELISM"] == "false"


def test_applying_sets_torch_and_the_variables_and_a_second_run_keeps_the_interop_pool():
    code = (
        "import os, torch; from pipelines.threads import Threads, apply_threads\n"
        "torch.ones(64, 64) @ torch.ones(64, 64)\n"
        "apply_threads(Threads(1, 'one')); apply_threads(Threads(2, 'two'))\n"  # the second interop call is refused
        "print(torch.get_num_threads(), torch.get_num_interop_threads(), os.environ['OMP_NUM_THREADS'])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2", "1", "2"]


@pytest.mark.parametrize("value", [0, 1025, "all"])
def test_training_threads_outside_1_to_1024_is_refused(tmp_path, value):
    path = tmp_path / "task.yaml"
    path.write_text(
        yaml.safe_dump(
            {"task": "t", "type": "classification", "data": {"path": "d.jsonl"}, "training": {"threads": value}}
        )
    )
    with pytest.raises(SpecError, match="training.threads"):
        load_spec(path)
    path.write_text(path.read_text().replace(f"threads: {value}", "threads: 4"))
    assert load_spec(path).training.threads == 4


def test_the_mlflow_run_records_the_threads_and_why():
    from pipelines import tracking
    from pipelines.results import PreparedData
    from pipelines.spec import TaskSpec

    calls: dict[str, dict] = {}
    runs = SimpleNamespace(
        start=lambda task, name, tags: calls.setdefault("tags", dict(tags)) and "run-1",
        log_params=lambda run_id, params: calls.setdefault("params", {}).update(params),
        set_tags=lambda run_id, tags: calls["tags"].update(tags),
        log_dataset=lambda *args: None,
    )
    spec = TaskSpec.model_validate({"task": "t", "type": "classification", "data": {"path": "d.jsonl"}})
    prepared = PreparedData(digest="d" * 64, folder="f", source="s", train=1, test=1, validation=0, labels=["a"])
    base = SimpleNamespace(fingerprint="b" * 64)
    run_id = tracking.start_run(SimpleNamespace(runs=runs), spec, prepared, base)
    tracking.log_threads(runs, run_id, Threads(2, "2 CPUs (affinity) / 1 run"))
    assert calls["tags"]["loraops.threads"] == "2 CPUs (affinity) / 1 run"
    assert calls["params"]["threads"] == "2" and calls["params"]["training.threads"] == "None"


def test_each_torchrun_worker_starts_with_its_share_of_the_node(monkeypatch):
    from pipelines.distributed import worker_env

    monkeypatch.setattr(threads_module, "affinity_cpus", lambda: 8)
    monkeypatch.setattr(threads_module, "cgroup_cpus", lambda root, membership: None)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")  # the flow process's own share, which its children inherit
    monkeypatch.setenv("LORAOPS_CONCURRENT_RUNS", "2")
    env = worker_env(None, 4)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert worker_env(None, 2)["OMP_NUM_THREADS"] == "2" and worker_env(3, 4)["OMP_NUM_THREADS"] == "3"
