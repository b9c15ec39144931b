"""`loraops run` across a work pool, the parts that need no server: which task files a call means, one task name
each, what the pool's workers can read, and how progress reads (reasons, metrics, overlap, change lines)."""

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tasks import write_task

from pipelines.cli.watch import ChangeLines
from pipelines.errors import DataError, InputError, SpecError
from pipelines.fanout import WorkerView, check_reachable, declared_env, deployment_name, worker_view
from pipelines.follow import Progress, max_overlap, metric_text, step_of
from pipelines.task_files import check_unique_tasks, expand_task_paths, load_spec

LOCAL_API = "http://127.0.0.1:4200/api"


def task(folder: Path, name: str, data_path: str = "data.jsonl", **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_task(folder, name, Path("/models/bert"), Path(), **{"data__path": data_path, **overrides})


def test_a_folder_stands_for_its_task_files_in_name_order(tmp_path):
    b, a = task(tmp_path / "tasks", "b"), task(tmp_path / "tasks", "a")
    (tmp_path / "tasks" / "c.yml").write_text(a.read_text().replace("task: a", "task: c"))
    (tmp_path / "tasks" / ".hidden.yaml").write_text("")
    (tmp_path / "tasks" / "notes.txt").write_text("")
    task(tmp_path / "tasks" / "nested", "d")  # not recursed into
    assert expand_task_paths([tmp_path / "tasks"]) == [a, b, tmp_path / "tasks" / "c.yml"]


def test_a_file_named_itself_and_through_its_folder_counts_once(tmp_path):
    a = task(tmp_path, "a")
    assert expand_task_paths([str(a), str(tmp_path), str(a)]) == [a]


def test_a_folder_without_task_files_is_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="a folder with no \\*.yaml task file"):
        expand_task_paths([tmp_path / "empty"])


def test_a_missing_path_is_left_for_load_spec_to_name(tmp_path):
    assert expand_task_paths([tmp_path / "nope.yaml"]) == [tmp_path / "nope.yaml"]
    with pytest.raises(InputError, match="task file .*nope.yaml: no such file"):
        load_spec(expand_task_paths([tmp_path / "nope.yaml"])[0])


def test_two_task_files_naming_one_task_are_refused_naming_both(tmp_path):
    first = task(tmp_path / "one", "same")
    second = task(tmp_path / "two", "same")
    with pytest.raises(SpecError) as refused:
        check_unique_tasks([load_spec(first), load_spec(task(tmp_path, "other")), load_spec(second)])
    assert str(first) in str(refused.value) and str(second) in str(refused.value) and "'same'" in str(refused.value)


def test_a_process_pool_on_a_loopback_server_sees_this_whole_machine():
    for url in (LOCAL_API, "http://localhost:4200/api", "http://[::1]:4200/api"):
        assert worker_view("p", "process", {}, {}, url).whole_host


@pytest.mark.parametrize(
    "pool_type, url",
    [("kubernetes", LOCAL_API), ("docker", LOCAL_API), ("process", "http://prefect.team:4200/api")],
)
def test_other_pools_see_nothing_of_this_machine_unless_declared(pool_type, url):
    view = worker_view("p", pool_type, {}, {}, url)
    assert not view.whole_host and view.roots == ()
    assert not view.sees("/home/me/data.jsonl") and view.sees("s3://bucket/data.jsonl")


def test_declared_roots_are_the_rule_even_for_a_local_process_pool(tmp_path):
    shared, home, mine = tmp_path / "nfs", tmp_path / "workers", tmp_path / "mine"
    pool_env = {"LORAOPS_SHARED_ROOTS": f"{shared}:/also", "LORAOPS_HOME": str(home)}
    view = worker_view("p", "process", pool_env, {"LORAOPS_SHARED_ROOTS": str(mine)}, LOCAL_API)
    assert not view.whole_host and view.roots == (shared, Path("/also"), home, mine)
    assert view.sees(str(shared / "a" / "data.jsonl")) and view.sees(str(home / "x")) and view.sees(str(mine))
    assert not view.sees(str(tmp_path / "elsewhere.jsonl")) and not view.sees(f"{shared}-other/x")


def test_a_pool_declares_its_environment_in_its_base_job_template():
    template = {
        "variables": {"properties": {"env": {"default": {"LORAOPS_SHARED_ROOTS": "/nfs", "X": None}}}},
        "job_configuration": {"env": "{{ env }}"},
    }
    assert declared_env(template) == {"LORAOPS_SHARED_ROOTS": "/nfs"}
    template["job_configuration"]["env"] = {"LORAOPS_HOME": "/srv/home"}
    assert declared_env(template) == {"LORAOPS_SHARED_ROOTS": "/nfs", "LORAOPS_HOME": "/srv/home"}
    assert declared_env({}) == {}


def test_data_outside_the_shared_roots_is_refused_naming_the_file_and_the_fix(tmp_path):
    shared = tmp_path / "shared"
    spec = load_spec(task(shared, "t", data_path=str(tmp_path / "private" / "data.jsonl")))
    view = WorkerView("gpu", (shared,), whole_host=False)
    with pytest.raises(DataError) as refused:
        check_reachable(spec, view)
    line = str(refused.value)
    assert "\n" not in line and f"data.path {tmp_path / 'private' / 'data.jsonl'}" in line
    assert "pool 'gpu' cannot read it" in line and "s3://" in line and "--local" in line


def test_everything_a_worker_opens_is_checked(tmp_path):
    shared = tmp_path / "shared"
    view = WorkerView("p", (shared,), whole_host=False)
    outside = task(tmp_path / "private", "t", data_path="s3://bucket/data.jsonl")
    with pytest.raises(SpecError, match="task file"):
        check_reachable(load_spec(outside), view)
    inside = dict(data_path="s3://b/d.jsonl")
    check_reachable(load_spec(task(shared, "ok", **inside, base__model="default")), view)
    check_reachable(load_spec(task(shared, "hub", **inside, base__model="org/some-model")), view)
    with pytest.raises(SpecError, match="base.model /models/bert is on this machine only"):
        check_reachable(load_spec(task(shared, "b", **inside)), view)
    with pytest.raises(SpecError, match="base.model './bert' is relative to this shell's folder"):
        check_reachable(load_spec(task(shared, "rel", **inside, base__model="./bert")), view)
    target = {"mode": "adapter", "target": str(tmp_path / "promoted")}
    with pytest.raises(SpecError, match="promotion.target"):
        check_reachable(load_spec(task(shared, "p", **inside, base__model="default", promotion=target)), view)
    with pytest.raises(DataError, match="data.test_path"):
        test_path = str(tmp_path / "test.jsonl")
        check_reachable(load_spec(task(shared, "tp", **inside, base__model="default", data__test_path=test_path)), view)


def test_a_relative_data_path_is_read_beside_its_task_file(tmp_path):
    spec = load_spec(task(tmp_path / "shared", "t", base__model="default"))
    check_reachable(spec, WorkerView("p", (tmp_path / "shared",), whole_host=False))


def test_run_deployments_never_meet_a_task_name():
    from registry.names import check_task_name

    with pytest.raises(Exception):
        check_task_name(deployment_name("loraops-cpu"))


def test_every_refusal_is_bad_input():
    assert issubclass(DataError, InputError) and issubclass(SpecError, InputError)


@pytest.mark.parametrize(
    "message, reason",
    [
        (
            "Flow run encountered an exception: StepFailed: t: train failed: loss diverged; the MLflow run r ended FAILED",
            "t: train failed: loss diverged; the MLflow run r ended FAILED",
        ),
        ("Crashed: worker process exited with code 137", "Crashed: worker process exited with code 137"),
        ("", "Failed"),
    ],
)
def test_a_failure_reads_as_its_own_message(message, reason):
    assert Progress("t", "id", state="Failed", state_type="FAILED", message=message).reason() == reason


def test_the_metric_is_the_loss_until_evaluated_then_the_gate_metric():
    assert metric_text({}, "accuracy") == "-"
    assert metric_text({"train_loss": 0.51234, "lr": 0.01}, "accuracy") == "loss 0.512"
    evaluated = {"train_loss": 0.2, "adapter_accuracy": 0.9, "base_accuracy": 0.333}
    assert metric_text(evaluated, "accuracy") == "accuracy 0.333 -> 0.900"


def test_a_task_run_names_its_step():
    assert step_of("train-0a1") == "train" and step_of("prepare_data-x9z") == "prepare_data" and step_of("x") == "x"


def test_overlap_counts_runs_open_at_one_moment_and_an_end_meets_a_start_without_overlapping():
    t = datetime(2025, 1, 1)
    at = lambda s: t + timedelta(seconds=s)  # noqa: E731
    assert max_overlap([]) == 0
    assert max_overlap([(at(0), at(10)), (at(10), at(20)), (at(20), at(30))]) == 1
    assert max_overlap([(at(0), at(10)), (at(5), at(15)), (at(6), at(7)), (at(12), at(20))]) == 3


def test_plain_lines_come_on_a_change_of_state_or_step_only():
    lines: list[str] = []
    show = ChangeLines(lines.append)
    row = Progress("t", "id")
    show([row])
    show([row])
    row.state, row.state_type, row.step, row.metric = "Running", "RUNNING", "train", "loss 0.700"
    show([row])
    row.metric = "loss 0.400"
    show([row])
    row.state, row.state_type = "Completed", "COMPLETED"
    show([row])
    assert lines == ["t: Submitted", "t: Running at train, loss 0.700", "t: Completed, loss 0.400"]


def test_the_parameters_a_caller_sends_are_what_the_flows_take():
    """Prefect checks a flow run's parameters against the flow's signature on the worker: what the pool submits
    must pass that check, each value coming back as the type the flow takes."""
    from pipelines.flows import TrainParameters, TrialParameters, search_trial, train_adapter
    from pipelines.spec import SearchSpec

    search = SearchSpec(trials=3, space={"lr": (1e-4, 1e-2)}, study="s")
    sent = TrainParameters(spec_path="t.yaml", search=search, run_id="r1").sent()
    checked = {"spec_path": "t.yaml", "prepared": None, "search": search, "run_id": "r1"}
    assert train_adapter.validate_parameters(sent) == checked
    alone = train_adapter.validate_parameters(TrainParameters(spec_path="t.yaml").sent())
    assert alone == checked | {"search": None, "run_id": None}
    trial = TrialParameters(spec_path="t.yaml", search=search, trial=4, parent_run_id="r1").sent()
    assert search_trial.validate_parameters(trial)["search"] == search
    with pytest.raises(ValueError, match="run_idd"):
        TrainParameters(spec_path="t.yaml", run_idd="r1")  # a misspelt one fails where it is built
