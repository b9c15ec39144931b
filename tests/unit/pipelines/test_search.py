"""training.search / loraops tune: bad search settings refused in one line before any trial; a tiny search on the
one-layer MiniLM whose trials are child runs of the task's run, whose first trial is the task's own settings and
whose study on SQLite resumes; a diverging trial is pruned, not fatal."""

import time

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from tasks import data_slice, tiny_base, write_task

from pipelines import steps
from pipelines.cli.main import main
from pipelines.errors import SearchFailed, SpecError, StudyError
from pipelines.follow import Progress
from pipelines.pool_search import Flying, landed, room_in_budget
from pipelines.search import SMALL_VALIDATION, defaults_first, noise_line, refit_spec, run_asked_trial, run_search
from pipelines.spec import SearchSpec
from pipelines.study import StudyPlan, check_study, open_study, plan_study
from pipelines.task_files import load_spec, searched
from pipelines.trial import TrialGround, suggest, trial_spec
from registry import AdapterRegistry, RegistrySettings

SEARCH_TRAINING = {"max_steps": 12, "batch_size": 16, "max_length": 32, "device": "cpu", "checkpoint_every": 100}


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("bert"))


def search_task(folder, base, name="sections", **search):
    training = {**SEARCH_TRAINING, "search": search or {"trials": 3, "space": {"lr": [5e-3, 5e-2], "r": [2, 8]}}}
    return write_task(
        folder, name, base, data_slice(folder, rows=160), data__validation_fraction=0.2, training=training
    )


@pytest.mark.parametrize(
    "search, validation, message",
    [
        ({"space": {"lr": [1e-3, 1e-3]}}, 0.2, "training.search.space: lr: the range [0.001, 0.001] is empty"),
        ({"space": {"lr": [1e-2, 1e-4]}}, 0.2, "training.search.space: lr: the range [0.01, 0.0001] is inverted"),
        ({"space": {"dropout": [0, 0.3]}}, 0.2, "'dropout' is not a parameter the search can set; use lr, r"),
        ({"space": {"r": [2.5, 8]}}, 0.2, "r: the range [2.5, 8] must hold integers above 0"),
        ({"space": {"lr": [0, 1e-2]}}, 0.2, "lr: the range [0, 0.01] must hold numbers above 0"),
        ({"trials": 0}, 0.2, "training.search.trials: trials 0 is no budget, no trial would run"),
        ({"timeout": 0}, 0.2, "training.search.timeout: timeout 0 is no budget"),
        ({"trials": None}, 0.2, "training.search: training.search needs a budget; give trials, timeout"),
        ({"space": {}}, 0.2, "an empty space searches nothing"),
        ({"trials": 3}, 0, "training.search scores trials on a validation split; set data.validation_fraction > 0"),
    ],
)
def test_bad_search_settings_are_one_line_naming_the_field_and_the_fix(tmp_path, search, validation, message):
    path = write_task(
        tmp_path, "t", tmp_path, tmp_path / "d.jsonl", data__validation_fraction=validation, training__search=search
    )
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trials", "0"], "with --trials/--timeout: training.search.trials: trials 0 is no budget"),
        (["--timeout", "0"], "training.search.timeout: timeout 0 is no budget"),
    ],
)
def test_tune_refuses_a_zero_budget_in_one_line_before_anything_starts(tmp_path, monkeypatch, capsys, args, message):
    home = tmp_path / "home"
    monkeypatch.setenv("LORAOPS_HOME", str(home))
    path = write_task(tmp_path, "t", tmp_path, tmp_path / "d.jsonl", data__validation_fraction=0.2)
    assert main(["tune", str(path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not home.exists()  # no server, no database, no study


def test_tune_refuses_a_task_without_a_validation_split(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORAOPS_HOME", str(tmp_path / "home"))
    path = write_task(tmp_path, "t", tmp_path, tmp_path / "d.jsonl")  # validation_fraction 0
    assert main(["tune", str(path), "--trials", "2"]) == 2
    assert "set data.validation_fraction > 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "training, fraction",
    [
        ({}, 0.0),  # the default average needs no split: all the data trains
        ({"patience": 2}, 0.1),
        ({"selection": "smoothed"}, 0.1),
        ({"search": {"trials": 3}}, 0.1),
    ],
)
def test_a_validation_split_is_held_out_by_default_only_where_passes_are_chosen_by_it(tmp_path, training, fraction):
    path = tmp_path / "t.yaml"
    path.write_text(
        yaml.safe_dump({"task": "t", "type": "classification", "data": {"path": "d.jsonl"}, "training": training})
    )
    spec = load_spec(path)
    assert spec.data.validation_fraction == fraction
    assert searched(spec, {}, "here").data.validation_fraction == 0.1  # loraops tune on the same file
    path.write_text(path.read_text().replace("path: d.jsonl", "path: d.jsonl\n  validation_fraction: 0.3"))
    assert load_spec(path).data.validation_fraction == 0.3  # as written, whatever trains


def test_trials_keep_alpha_over_r_unless_alpha_is_searched(tmp_path):
    spec = load_spec(write_task(tmp_path, "t", tmp_path, tmp_path / "d.jsonl"))  # r 4, alpha 8, max_steps 30
    one = trial_spec(spec, {"r": 16, "lr": 1e-3, "epochs": 3})
    assert (one.lora.r, one.lora.alpha, one.training.lr) == (16, 32.0, 1e-3)
    assert (one.training.epochs, one.training.max_steps, one.training.search) == (3, None, None)
    assert trial_spec(spec, {"r": 16, "alpha": 4}).lora.alpha == 4


@pytest.mark.parametrize(
    "training, search, refits",
    [
        ({}, {}, True),
        ({}, {"refit": False}, False),
        ({"selection": "best"}, {}, False),  # chooses a pass on the split: the trial's adapter ships
        ({"selection": "smoothed", "patience": 2}, {}, False),
    ],
)
def test_the_best_trials_settings_train_again_on_all_the_data_unless_a_pass_is_chosen(
    tmp_path, training, search, refits
):
    path = tmp_path / "t.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "task": "t",
                "type": "classification",
                "data": {"path": "d.jsonl"},
                "training": training | {"search": search | {"trials": 3}},
            }
        )
    )
    spec = load_spec(path)
    best = trial_spec(spec, {"lr": 1e-3, "r": 16, "epochs": 3})
    refit = refit_spec(best, spec.training.search)
    assert (refit is not None) == refits
    if refit:
        assert refit.data.validation_fraction == 0 and spec.data.validation_fraction == 0.1
        assert refit.training == best.training and refit.lora == best.lora  # the trial's settings, its epochs
        assert refit.model_dump(exclude={"data"}) == best.model_dump(exclude={"data"})


def test_a_study_name_of_another_task_or_space_is_refused_before_any_trial(tmp_path, embedded_home):
    settings = RegistrySettings.from_env()
    prepared = steps.PreparedData(
        digest="a" * 64, folder=str(tmp_path), source="x", train=1, test=1, validation=1, labels=[]
    )
    shared = SearchSpec(study="shared", space={"lr": (1e-4, 1e-2)})
    first = load_spec(write_task(tmp_path, "first", tmp_path, tmp_path / "d.jsonl", data__validation_fraction=0.2))
    other = load_spec(write_task(tmp_path, "other", tmp_path, tmp_path / "d.jsonl", data__validation_fraction=0.2))
    check_study(plan_study(first, shared, prepared, settings))  # no database yet: nothing to collide with
    assert not (embedded_home / "studies.db").exists()
    open_study(plan_study(first, shared, prepared, settings), seed=0)
    with pytest.raises(StudyError, match="study 'shared' in sqlite:///.* belongs to task 'first', not 'other'"):
        check_study(plan_study(other, shared, prepared, settings))
    wider = shared.model_copy(update={"space": {"lr": (1e-5, 1e-2)}})
    with pytest.raises(StudyError, match="was started for another space"):
        check_study(plan_study(first, wider, prepared, settings))
    check_study(plan_study(first, shared, prepared, settings))  # the same task, data and space resume it


def search_inputs(tmp_path, base, **search):
    """(spec, search, plan, prepared, base fingerprint, registry, parent run) of a task ready to search."""
    settings = RegistrySettings.from_env()
    spec = load_spec(search_task(tmp_path, base, **search))
    assert spec.training.search is not None
    prepared = steps.prepare_data(spec, settings.home / "work" / spec.task)
    registry = AdapterRegistry(settings)
    base_record = registry.register_base(base, name="tiny-bert")
    parent = registry.runs.start(spec.task, "tune", {})
    plan = plan_study(spec, spec.training.search, prepared, settings)
    return spec, spec.training.search, plan, prepared, base_record.fingerprint, registry, parent


def test_a_three_trial_search_makes_child_runs_and_a_stopped_study_resumes(tmp_path, embedded_home, bert_base):
    spec, search, plan, prepared, fingerprint, registry, parent = search_inputs(tmp_path, bert_base)
    work = str(embedded_home / "work" / spec.task)
    lines: list[str] = []
    args = (plan, TrialGround(prepared, str(bert_base), fingerprint, work, registry, parent))
    two = run_search(spec, search.model_copy(update={"trials": 2}), *args, print_=lines.append)
    assert (two.summary.ran, two.summary.trials) == (2, 2) and len(lines) == 3
    assert f"trials are ranked on {prepared.validation} validation examples, where accuracy has" in lines[0]
    found = run_search(spec, search, *args, print_=lines.append)  # budget 3: one more trial, not three
    summary = found.summary
    assert (summary.ran, summary.trials, summary.complete + summary.pruned) == (1, 3, 3)
    assert summary.study == f"sections-tiny-bert-{prepared.digest[:8]}" or summary.study.startswith("sections-")
    assert summary.storage == f"sqlite:///{embedded_home / 'studies.db'}" and summary.metric == "accuracy"
    study = optuna.load_study(study_name=summary.study, storage=summary.storage)
    assert len(study.trials) == 3 and study.best_trial.number == summary.best_trial
    assert study.trials[0].params["r"] == 4  # the task's own r first; its lr (2e-3) is outside the space: sampled
    assert summary.best_value == max(t.value for t in study.trials if t.value is not None)
    assert set(summary.best_params) == {"lr", "r"} and 2 <= summary.best_params["r"] <= 8
    # The best trial's adapter is what the flow ships: trained with its parameters, on disk with its record.
    assert found.trained is not None and found.spec.lora.r == summary.best_params["r"]
    assert found.trained.best_validation is not None
    assert found.trained.best_validation.metrics["accuracy"] == summary.best_value
    children = MlflowClient(registry.settings.tracking_uri).search_runs(
        [registry.experiment(f"loraops-{spec.task}")], f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert sorted(r.data.tags["loraops.trial"] for r in children) == ["0", "1", "2"]
    assert {r.data.tags["loraops.study"] for r in children} == {summary.study}
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)
    assert all("val_accuracy" in r.data.metrics for r in children)
    again = run_search(spec, search, *args, print_=lines.append)  # budget spent: no trial, the same best
    assert again.summary.ran == 0 and again.summary.best_trial == summary.best_trial
    assert "has spent its budget (3 trials)" in lines[-1]


def test_a_diverging_trial_is_pruned_not_fatal_and_a_search_without_a_complete_trial_fails(
    tmp_path, embedded_home, bert_base
):
    spec, search, plan, prepared, fingerprint, registry, parent = search_inputs(
        tmp_path, bert_base, trials=2, space={"lr": [1e30, 1e31]}
    )
    lines: list[str] = []
    with pytest.raises(SearchFailed, match="none of the 2 trials of study .* completed \\(2 diverged, 0 pruned\\)"):
        run_search(
            spec,
            search,
            plan,
            TrialGround(
                prepared, str(bert_base), fingerprint, str(embedded_home / "work" / spec.task), registry, parent
            ),
            print_=lines.append,
        )
    assert len(lines) == 3 and "validation examples" in lines[0]  # the small split's note, then the two trials
    assert all("diverged: training diverged at step" in line for line in lines[1:])
    study = optuna.load_study(study_name=plan.name, storage=plan.storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    children = MlflowClient(registry.settings.tracking_uri).search_runs(
        [registry.experiment(f"loraops-{spec.task}")], f"tags.mlflow.parentRunId = '{parent}'"
    )
    assert [r.info.status for r in children] == ["FAILED", "FAILED"]
    assert all(r.data.tags["loraops.failure"].startswith("training diverged") for r in children)


def test_a_trial_asked_for_here_trains_elsewhere_with_its_values_and_one_without_an_outcome_stops_the_search(
    tmp_path, embedded_home, bert_base
):
    """The pool's way (pool_search.py): trials asked for in one process, trained and told in another
    (run_asked_trial, as a search_trial flow run does); a flow run that ended without telling fails its trial
    and the search, and a failed trial does not count in the budget."""
    spec, search, plan, prepared, fingerprint, registry, parent = search_inputs(
        tmp_path, bert_base, trials=2, space={"lr": [5e-3, 5e-2]}
    )
    opened = open_study(plan, seed=0, heartbeat=False)
    study = opened.study
    asked = [study.ask() for _ in range(2)]
    params = [suggest(trial, search) for trial in asked]
    assert params[0] != params[1]
    work = str(embedded_home / "work" / spec.task)
    outcome = run_asked_trial(
        spec, search, plan, asked[0].number, TrialGround(prepared, str(bert_base), fingerprint, work, registry, parent)
    )
    told = optuna.load_study(study_name=plan.name, storage=plan.storage).trials[0]
    assert told.state == TrialState.COMPLETE and outcome.state == "complete" and told.value == outcome.value
    assert told.params == params[0] and told.user_attrs["loraops.run_id"] == outcome.run_id
    ended = Progress(spec.task, "run-1", flow_run="sections-trial-1", state="Crashed", state_type="CRASHED")
    ended.message = "the worker's process exited with code -9"
    with pytest.raises(SearchFailed, match=r"trial 1 ended Crashed on the pool without an outcome \(the worker's"):
        landed(opened, Flying(1, params[1], 0.0), ended, spec.task)
    assert study.get_trials(deepcopy=False)[1].state == TrialState.FAIL
    assert room_in_budget(study, search, {})  # budget 2: one finished, the failed one not counted
    assert not room_in_budget(study, search, {"run-2": Flying(2, {}, time.monotonic())})
    assert landed(opened, Flying(0, params[0], 0.0), ended, spec.task).startswith("sections: trial 0 complete: ")


def test_the_first_trial_is_the_tasks_own_settings_where_the_space_holds_them(tmp_path, embedded_home):
    spec = load_spec(write_task(tmp_path, "t", tmp_path, tmp_path / "d.jsonl", data__validation_fraction=0.2))
    prepared = steps.PreparedData(
        digest="b" * 64, folder=str(tmp_path), source="x", train=1, test=1, validation=1, labels=[]
    )
    inside = SearchSpec(space={"lr": (1e-3, 1e-1), "r": (8, 32), "epochs": (2, 10)})  # r 4 outside; max_steps
    study = open_study(plan_study(spec, inside, prepared, RegistrySettings.from_env()), seed=0).study
    defaults_first(study, spec, inside)
    defaults_first(study, spec, inside)  # once: a resumed study is not given them again
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.WAITING]
    first = study.ask()
    params = suggest(first, inside)
    assert params["lr"] == 2e-2 and 8 <= params["r"] <= 32 and 2 <= params["epochs"] <= 10  # the rest sampled


def test_a_validation_split_too_small_to_rank_trials_is_said_in_one_line():
    plan = StudyPlan("s", "sqlite://", "accuracy", "maximize", {})
    assert "ranked on 100 validation examples, where accuracy has a standard error of up to 5.0 points" in (
        noise_line("t", plan, 100) or ""
    )
    assert noise_line("t", plan, SMALL_VALIDATION) is None
    assert noise_line("t", plan._replace(metric="loss", direction="minimize"), 100) is None


@pytest.mark.parametrize("url", ["dbhost/optuna", "postgresql://tuner:s3cret@db:notaport/optuna"])
def test_a_storage_url_that_does_not_parse_is_one_line_without_its_password(url):
    from pipelines.study import open_storage

    with pytest.raises(StudyError, match="cannot open the study storage .*fix training.search.storage") as e:
        open_storage(url)
    assert "s3cret" not in str(e.value) and "\n" not in str(e.value)
