"""Where a search's Optuna study lives and which study a task's search continues.

The study lives where the registry lives: an SQLAlchemy URL in training.search.storage or $LORAOPS_STUDY_STORAGE
(infra/stack.sh points it at the stack's PostgreSQL, database `optuna`: Optuna and MLflow both keep an
`alembic_version` table, so they cannot share one database), else SQLite at $LORAOPS_HOME/studies.db. A study
records the task, base, data, metric and space it was started for; a search resumes it only when all match.
"""

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from registry import RegistrySettings

from .base_names import base_name
from .errors import StudyError
from .results import PreparedData
from .spec import SearchSpec, TaskSpec

if TYPE_CHECKING:
    import optuna

STORAGE_VARIABLE = "LORAOPS_STUDY_STORAGE"
ATTR = "loraops."  # prefix of the study's user attributes that name what it was started for
LOWER_IS_BETTER = ("loss", "perplexity")
HEARTBEAT_S, GRACE_S = 30, 120  # a trial silent for GRACE_S (its process killed) is failed by the next search
TPE_STARTUP = 4  # random trials before TPE models the space (Optuna's default 10 leaves little of a 12-trial budget)


class StudyPlan(NamedTuple):
    name: str
    storage: str  # SQLAlchemy URL
    metric: str  # validation metric trials are scored on
    direction: Literal["maximize", "minimize"]
    attrs: dict[str, str]  # what a study of this name must have been started for


def storage_url(search: SearchSpec, settings: RegistrySettings) -> str:
    return search.storage or os.environ.get(STORAGE_VARIABLE) or f"sqlite:///{settings.home / 'studies.db'}"


def shown(url: str) -> str:
    """The storage URL without its password, for messages and tags (one SQLAlchemy cannot parse: the text with
    anything between `user:` and `@` masked)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - ArgumentError, or ValueError for a port that is no number
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)


def plan_study(spec: TaskSpec, search: SearchSpec, prepared: PreparedData, settings: RegistrySettings) -> StudyPlan:
    base = base_name(spec.base) + (f"@{spec.base.revision}" if spec.base.revision else "")
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")[-40:]
    metric = spec.training.best_metric or spec.gate.metric
    return StudyPlan(
        name=search.study or f"{spec.task}-{slug}-{prepared.digest[:8]}",
        storage=storage_url(search, settings),
        metric=metric,
        direction="minimize" if metric in LOWER_IS_BETTER else "maximize",
        attrs={
            "task": spec.task,
            "base": base,
            "dataset": prepared.digest,
            "metric": metric,
            "space": json.dumps(search.space, sort_keys=True),
        },
    )


def check_study(plan: StudyPlan, storage: "optuna.storages.BaseStorage | None" = None) -> None:
    """StudyError when a study of the plan's name exists for another task, base, data, metric or space."""
    if storage is None:
        path = plan.storage.removeprefix("sqlite:///")
        if plan.storage.startswith("sqlite:///") and not Path(path).exists():
            return  # no database yet: no study to collide with, and none created by a check
        storage = open_storage(plan.storage)
    try:
        attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(plan.name))
    except KeyError:
        return
    for key, wanted in plan.attrs.items():
        found = attrs.get(ATTR + key)
        if found == wanted:
            continue
        if key == "task":
            raise StudyError(
                f"study {plan.name!r} in {shown(plan.storage)} belongs to task {found!r}, not {wanted!r}; set "
                f"training.search.study to a name of this task's own"
            )
        raise StudyError(
            f"study {plan.name!r} in {shown(plan.storage)} was started for another {key} ({found} vs now {wanted}); "
            f"set training.search.study to a new name, or delete the study to start over"
        )


def open_storage(url: str, heartbeat: bool = True) -> "optuna.storages.RDBStorage":
    """The storage at `url`; with `heartbeat`, a trial of Study.optimize silent for GRACE_S is failed by the next
    search (trials asked and told by hand, on the pool, are failed by the process that asked: pool_search.py)."""
    import optuna

    try:
        if not heartbeat:
            return optuna.storages.RDBStorage(url)
        return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as e:  # noqa: BLE001 - a URL or a server that does not answer: either way the setting
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise StudyError(
            f"cannot open the study storage {shown(url)} ({first}); fix training.search.storage or ${STORAGE_VARIABLE}"
        ) from None


class OpenedStudy(NamedTuple):
    """A study with the storage it was opened on and its id there: a trial is read or asked for by number in one
    query, whatever the study's size (Optuna's Study keeps both private)."""

    study: "optuna.Study"
    storage: "optuna.storages.RDBStorage"
    study_id: int

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def asked_trial(self, number: int) -> "optuna.Trial":
        """Trial `number`, asked for (running) in another process: its parameters are those suggested there."""
        import optuna

        return optuna.Trial(self.study, self.trial_id(number))

    def read_trial(self, number: int) -> "optuna.trial.FrozenTrial":
        """Trial `number` as the storage holds it now, read alone (not the study's every trial)."""
        return self.storage.get_trial(self.trial_id(number))


def open_study(plan: StudyPlan, seed: int, heartbeat: bool = True) -> OpenedStudy:
    """The plan's study, created or resumed (load_if_exists), with a TPE sampler and a median pruner over the
    validation passes (by pass number: trials of different lengths compare at the same share of their training)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial's line comes from the search
    storage = open_storage(plan.storage, heartbeat)
    check_study(plan, storage)
    study = optuna.create_study(
        storage=storage,
        study_name=plan.name,
        direction=plan.direction,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        load_if_exists=True,
    )
    # Seeded past the trials already there: a resumed search must not draw its predecessor's startup points again.
    # constant_liar: trials running elsewhere (on the pool) count as bad results, so parallel trials spread out.
    study.sampler = optuna.samplers.TPESampler(
        n_startup_trials=TPE_STARTUP, multivariate=True, constant_liar=True, seed=seed + len(study.trials)
    )
    for key, value in plan.attrs.items():
        if ATTR + key not in study.user_attrs:
            study.set_user_attr(ATTR + key, value)
    return OpenedStudy(study, storage, storage.get_study_id_from_name(plan.name))
