"""A search (training.search, `loraops tune`): Optuna trials of the task, each a Prefect task run and a child MLflow
run of the task's run; then the best trial's adapter goes through the flow's usual steps (flows.py).

The budget counts the study's finished trials (complete or pruned), earlier searches' included: trials: 12 after a
search stopped at 5 runs 7 more; timeout counts their training time the same way. A trial interrupted by a signal
or a crash is failed by Optuna and not counted. Here trials run one after another in this process; `loraops tune`
with a Prefect server fans them out over the work pool (pool_search.py), each a `search_trial` flow run that
trains one trial this module's way (run_asked_trial).
"""

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import optuna
from optuna.trial import TrialState
from prefect import task
from prefect.cache_policies import NO_CACHE

from .errors import SearchFailed
from .results import SearchSummary, TrainedAdapter, TrialOutcome
from .spec import SearchSpec, TaskSpec
from .study import StudyPlan, open_study, shown
from .trial import TrialGround, run_trial, suggest, trial_spec

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Below this many validation examples trials differing by a few points are told apart by chance: TUNING.md's
# 12-trial searches on splits of 100-175 examples moved test accuracy by -3.1 to +2.7 points (mean -0.5).
SMALL_VALIDATION = 500
TrialRunner = Callable[..., TrialOutcome]  # run_trial, or trial_task (the same as a Prefect task run)


class Found(NamedTuple):
    spec: TaskSpec  # the task as the best trial trained it
    trained: TrainedAdapter | None  # its adapter; None when its work folder is gone (the flow trains it again)
    summary: SearchSummary


@task(name="trial", cache_policy=NO_CACHE, task_run_name="trial-{trial.number}")
def trial_task(
    spec: TaskSpec, trial: optuna.Trial, params: dict[str, float], metric: str, ground: TrialGround
) -> TrialOutcome:
    return run_trial(spec, trial, params, metric, ground)


def budget_left(study: optuna.Study, search: SearchSpec) -> tuple[int | None, float | None]:
    """(trials, seconds) still to run: the budget less the study's finished trials and their time."""
    done = study.get_trials(deepcopy=False, states=FINISHED)
    spent = sum((t.duration.total_seconds() if t.duration else 0.0) for t in done)
    trials = None if search.trials is None else max(0, search.trials - len(done))
    seconds = None if search.timeout is None else max(0.0, search.timeout - spent)
    return trials, seconds


def run_search(
    spec: TaskSpec,
    search: SearchSpec,
    plan: StudyPlan,
    ground: TrialGround,
    run_with: TrialRunner = run_trial,
    print_=print,
) -> Found:
    """Run the trials the budget leaves, then return the study's best trial (SearchFailed when none completed)."""
    if line := noise_line(spec.task, plan, ground.prepared.validation):
        print_(line)
    study = open_study(plan, spec.training.seed).study
    defaults_first(study, spec, search)
    before = len(study.get_trials(deepcopy=False, states=FINISHED))
    trials, seconds = budget_left(study, search)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, search)
        outcome = run_with(spec, trial, params, plan.metric, ground)
        print_(trial_line(spec.task, trial.number, outcome.state, outcome.reason, params))
        return record(trial, outcome)

    if trials != 0 and seconds != 0:
        study.optimize(objective, n_trials=trials, timeout=seconds, gc_after_trial=True)
    else:
        print_(f"{spec.task}: study {plan.name} has spent its budget ({before} trials); shipping its best trial")
    return best_of(study, spec, plan, before)


def noise_line(task: str, plan: StudyPlan, validation: int) -> str | None:
    """A line when the validation split is too small to rank trials: a share (accuracy, F1) measured on n examples
    has a standard error of up to 50/sqrt(n) points."""
    if plan.direction != "maximize" or validation >= SMALL_VALIDATION:
        return None
    return (
        f"{task}: note: trials are ranked on {validation} validation examples, where {plan.metric} has a standard "
        f"error of up to {50 / math.sqrt(validation):.1f} points: trials closer than that are told apart by chance "
        f"(docs/tuning.md: when a search pays)"
    )


def defaults_first(study: optuna.Study, spec: TaskSpec, search: SearchSpec) -> None:
    """A new study's first trial is the task's own settings, those the space holds (the rest sampled): the search
    starts from what a plain run ships, and its best trial is measured against the defaults on the same split."""
    if study.get_trials(deepcopy=False):
        return
    length, value = spec.training.length
    own = {"lr": spec.training.lr, "r": spec.lora.r, "alpha": spec.lora.alpha}
    if length == "epochs":
        own["epochs"] = value
    params = {name: own[name] for name, (low, high) in search.space.items() if name in own and low <= own[name] <= high}
    if params:
        study.enqueue_trial(params)


def trial_line(task: str, number: int, state: str, reason: str, params: dict[str, float]) -> str:
    shown_params = ", ".join(f"{k}={v:.3g}" for k, v in params.items())
    return f"{task}: trial {number} {state}: {reason} ({shown_params})"


def record(trial: optuna.Trial, outcome: TrialOutcome) -> float:
    """The outcome kept on the trial (its user attributes); its value, or TrialPruned when it is not complete."""
    trial.set_user_attr("loraops.outcome", outcome.state)
    trial.set_user_attr("loraops.reason", outcome.reason)
    trial.set_user_attr("loraops.run_id", outcome.run_id)
    if outcome.state != "complete" or outcome.value is None or outcome.trained is None:
        raise optuna.TrialPruned(outcome.reason)
    trial.set_user_attr("loraops.adapter", outcome.trained.adapter)
    return outcome.value


def run_asked_trial(
    spec: TaskSpec, search: SearchSpec, plan: StudyPlan, number: int, ground: TrialGround
) -> TrialOutcome:
    """Trial `number` of the plan's study, asked for by another process (pool_search.py), trained here and told:
    complete with its value, or pruned."""
    opened = open_study(plan, spec.training.seed, heartbeat=False)
    trial = opened.asked_trial(number)
    outcome = run_trial(spec, trial, suggest(trial, search), plan.metric, ground)  # suggest: the values asked for
    try:
        opened.study.tell(trial, record(trial, outcome))
    except optuna.TrialPruned:
        opened.study.tell(trial, state=TrialState.PRUNED)
    return outcome


def best_of(study: optuna.Study, spec: TaskSpec, plan: StudyPlan, before: int) -> Found:
    done = study.get_trials(deepcopy=False, states=FINISHED)
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    if not complete:
        diverged = sum(1 for t in done if t.user_attrs.get("loraops.outcome") == "diverged")
        raise SearchFailed(
            f"none of the {len(done)} trials of study {plan.name} completed ({diverged} diverged, "
            f"{len(done) - diverged} pruned); lower the lr range in training.search.space or give more trials"
        )
    best = study.best_trial
    params = {name: float(value) for name, value in best.params.items()}
    record = Path(best.user_attrs.get("loraops.adapter", "")).parent / "train.json"
    trained = TrainedAdapter.model_validate_json(record.read_text()) if record.is_file() else None
    summary = SearchSummary(
        study=plan.name,
        storage=shown(plan.storage),
        metric=plan.metric,
        trials=len(done),
        complete=len(complete),
        pruned=len(done) - len(complete),
        ran=len(done) - before,
        best_trial=best.number,
        best_value=float(best.value or 0.0),
        best_params=params,
    )
    return Found(trial_spec(spec, params), trained, summary)


def search_tags(summary: SearchSummary) -> dict[str, str]:
    """The registered version's record of the search that chose it."""
    return {
        "loraops.search.study": summary.study,
        "loraops.search.storage": summary.storage,
        "loraops.search.trials": str(summary.trials),
        "loraops.search.best_trial": str(summary.best_trial),
        f"loraops.search.best_val_{summary.metric}": f"{summary.best_value:.6g}",
        "loraops.search.best_params": json.dumps(summary.best_params, sort_keys=True),
        "loraops.search.refit": str(summary.refit).lower(),
    }


def refit_spec(spec: TaskSpec, search: SearchSpec) -> TaskSpec | None:
    """The best trial's settings (`spec`) as a refit trains them: on all the training data, for the same epochs or
    steps; None where the trial's own adapter ships (refit off, or a selection that chooses a pass on the split)."""
    t = spec.training
    if not search.refit or t.selection != "average" or t.patience is not None:
        return None
    return spec.model_copy(update={"data": spec.data.model_copy(update={"validation_fraction": 0.0})})
