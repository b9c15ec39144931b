"""A search fanned out over the work pool: what `loraops tune` does with a Prefect server.

This process drives the study with Optuna's ask-and-tell: it asks for as many trials as the pool has room for (its
concurrency limit, else one per worker online) and submits each as a flow run of `search_trial` (flows.py) from the
pool's deployment `loraops-trial@<pool>`. A worker trains the trial in a child MLflow run of the task's run,
reports each validation pass to the study (so the median pruner compares trials wherever they run) and tells the
outcome; as each ends, this process asks for the next, until the budget (search.py) is spent. The task's run then
ships the best trial in a flow run of `train_adapter` on the pool, like any `loraops run`.

This process holds no slot of the pool while it waits: the trials and the run that ships get every slot, and a
search waiting on the pool cannot keep its own trials (or another search's) from starting.
A trial whose flow run ends without telling the study (crashed, cancelled, or failed with an error that is not a
pruned or diverged trial) stops the search: the trials still running are cancelled, and the task's run fails.
"""

import time
from collections.abc import Callable
from typing import Any, NamedTuple
from uuid import UUID

from registry import RunTracking

from .errors import SearchFailed
from .fanout import Submitted, apply_deployment, ask_pool, cancel
from .follow import Follower, Progress
from .results import SearchSummary
from .search import FINISHED, best_of, budget_left, defaults_first, trial_line
from .spec import SearchSpec, TaskSpec
from .study import OpenedStudy, StudyPlan, open_study
from .trial import suggest

POLL_S = 2.0


def trial_deployment(pool: str) -> str:
    return f"loraops-trial@{pool}"


def pool_room(pool: Any) -> int:
    """Trials to keep running at once on `pool` (a prefect WorkPool): its concurrency limit, else its workers
    online (each takes one at a time unless the team set it otherwise)."""
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    if pool.concurrency_limit:
        return int(pool.concurrency_limit)
    online = WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
    return max(1, len(ask_pool(pool.name, lambda c: c.read_workers_for_work_pool(pool.name, worker_filter=online))))


class Flying(NamedTuple):
    """A trial submitted to the pool and not yet ended."""

    number: int
    params: dict[str, float]
    started: float  # time.monotonic()


def room_in_budget(study: Any, search: SearchSpec, flying: dict[str, Flying]) -> bool:
    """Whether the budget leaves room for one more trial beside those running (their time so far counts)."""
    trials, seconds = budget_left(study, search)
    if trials is not None and trials - len(flying) <= 0:
        return False
    running = sum(time.monotonic() - f.started for f in flying.values())
    return seconds is None or seconds - running > 0


def search_on_pool(
    spec: TaskSpec,
    search: SearchSpec,
    plan: StudyPlan,
    pool: str,
    room: int,
    parent_run_id: str,
    print_: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> SearchSummary:
    """Trials of `search` (its study and storage pinned to `plan`'s) on `pool`, at most `room` at once, until the
    budget is spent; the study's best trial. Raises SearchFailed when a trial's flow run ends without telling the
    study, or when none completed."""
    from prefect.client.orchestration import get_client

    from .flows import TrialParameters, search_trial

    opened = open_study(plan, spec.training.seed, heartbeat=False)
    study = opened.study
    defaults_first(study, spec, search)
    before = len(study.get_trials(deepcopy=False, states=FINISHED))
    deployment = UUID(apply_deployment(pool, search_trial, trial_deployment(pool)))
    flying: dict[str, Flying] = {}
    try:
        while True:
            with get_client(sync_client=True) as client:
                while len(flying) < room and room_in_budget(study, search, flying):
                    trial = study.ask()
                    params = suggest(trial, search)
                    sent = TrialParameters(
                        spec_path=str(spec.source), search=search, trial=trial.number, parent_run_id=parent_run_id
                    )
                    try:
                        run = client.create_flow_run_from_deployment(
                            deployment, parameters=sent.sent(), tags=["loraops", spec.task, "trial"]
                        )
                    except BaseException:
                        fail(opened, trial.number)  # asked for, never submitted
                        raise
                    flying[str(run.id)] = Flying(trial.number, params, time.monotonic())
            if not flying:
                return best_of(study, spec, plan, before).summary
            sleep(POLL_S)
            watched = [Submitted(spec.task, str(spec.source), flow_run_id) for flow_run_id in flying]
            for row in Follower(watched, {}, None).look():
                if row.final:
                    ended = flying.pop(row.flow_run_id)
                    print_(landed(opened, ended, row, spec.task))
    except BaseException:
        cancel(list(flying))
        for ended in flying.values():
            fail(opened, ended.number)
        raise


def landed(opened: OpenedStudy, ended: Flying, row: Progress, task: str) -> str:
    """The line of a trial whose flow run ended; SearchFailed when the worker did not tell the study its outcome."""
    from optuna.trial import TrialState

    trial = opened.read_trial(ended.number)
    if trial.state == TrialState.RUNNING:
        fail(opened, ended.number)
        raise SearchFailed(
            f"{task}: trial {ended.number} ended {row.state} on the pool without an outcome ({row.reason()}; flow run "
            f"{row.flow_run}); the search stops: fix the cause and run loraops tune again to resume the study"
        )
    state = trial.user_attrs.get("loraops.outcome", trial.state.name.lower())
    return trial_line(task, ended.number, state, trial.user_attrs.get("loraops.reason", ""), ended.params)


def fail(opened: OpenedStudy, number: int) -> None:
    """Trial `number` told failed (not counted in the budget), unless it already has its outcome."""
    from optuna.trial import TrialState

    if opened.read_trial(number).state == TrialState.RUNNING:
        opened.study.tell(number, state=TrialState.FAIL)


def end_parent(runs: RunTracking, run_id: str, error: BaseException, step: str = "search") -> None:
    """The task's run ended by the process that started it, stopped at `step`: KILLED by a signal, else FAILED."""
    from .lifecycle import interrupted_by, one_line

    kind = interrupted_by(error)
    runs.end(run_id, "KILLED" if kind else "FAILED", f"{step}: {f'interrupted ({kind})' if kind else one_line(error)}")
