"""A task's aliases and their history, and drift between the two.

Every alias move loraops makes is appended to the task's history (registered-model tags, one per event). Anyone
with MLflow access can still move an alias by hand (the UI, a raw MlflowClient); then the registry and the
history's last word disagree. That is drift: it is shown, and promote/rollback refuse to act on it until the user
says which side is right: `accept` records the registry's state as an outside move, `revert` moves the alias
back to where the history says it is. Nothing is overwritten silently.
"""

import time
from datetime import datetime, timezone
from typing import NamedTuple

from mlflow import MlflowClient
from mlflow.entities.model_registry import RegisteredModel
from mlflow.exceptions import MlflowException
from pydantic import BaseModel, ConfigDict

from .errors import RegistryError, UnknownTaskError
from .names import ALIASES, check_task_name
from .paging import Pages
from .records import HistoryEvent
from .tags import KIND

HISTORY_TAG = "loraops.history."
SETTLE = ("accept", "revert")
OUTSIDE = "outside loraops"


class DriftError(RegistryError):
    """An alias was moved outside loraops; the message says where and how to settle it."""


class Drift(BaseModel):
    """One alias where the registry and loraops's history disagree."""

    model_config = ConfigDict(frozen=True)
    task: str
    alias: str
    registry: int | None  # where the alias points in MLflow now
    history: int | None  # where loraops's last recorded move put it

    def __str__(self) -> str:
        def at(v: int | None) -> str:
            return f"v{v}" if v is not None else "unset"

        return f"{self.task} {self.alias} is {at(self.registry)} in the registry but {at(self.history)} in loraops's history"


class TaskState(NamedTuple):
    """A task's aliases and its history (oldest first), as one registered model holds them."""

    aliases: dict[str, int]
    history: list[HistoryEvent]

    @classmethod
    def of(cls, model: RegisteredModel) -> "TaskState":
        tags = model.tags
        return cls(
            {alias: int(v) for alias, v in model.aliases.items()},
            [HistoryEvent.model_validate_json(tags[key]) for key in sorted(tags) if key.startswith(HISTORY_TAG)],
        )

    def drift(self, task: str) -> list[Drift]:
        recorded: dict[str, int | None] = {}
        for event in self.history:
            recorded[event.alias] = event.to_version
        return [
            Drift(task=task, alias=alias, registry=self.aliases.get(alias), history=recorded.get(alias))
            for alias in ALIASES
            if self.aliases.get(alias) != recorded.get(alias)
        ]


class AliasBook:
    """Aliases, history and drift of tasks on one MLflow registry; every move by `actor` is recorded."""

    def __init__(self, client: MlflowClient, actor: str, pages: Pages):
        self.client, self.actor, self.pages = client, actor, pages

    def state(self, task: str) -> TaskState:
        """(aliases, history oldest first) in one round trip."""
        check_task_name(task)
        try:
            return TaskState.of(self.client.get_registered_model(task))
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # a server that failed is not a missing task
            raise UnknownTaskError(f"no task {task!r} in the registry; see `loraops adapters list`") from None

    def states(self, prefix: str = "") -> dict[str, TaskState]:
        """Every task (whose name starts with `prefix`) and its state: one request per page of tasks."""
        where = f"tags.`{KIND}` = 'task'" + (f" and name LIKE '{prefix}%'" if prefix else "")
        return {model.name: TaskState.of(model) for model in self.pages.models(where)}

    def aliases(self, task: str) -> dict[str, int]:
        return self.state(task).aliases

    def history(self, task: str) -> list[HistoryEvent]:
        return self.state(task).history

    def drift(self, task: str) -> list[Drift]:
        return self.state(task).drift(task)

    def settle(self, task: str, how: str | None, action: str) -> list[HistoryEvent]:
        """Before `action` (promote, rollback): refuse on drift unless `how` says which side is right."""
        found = self.drift(task)
        if not found:
            return []
        if how not in SETTLE:
            raise DriftError(
                f"{found[0]} (moved {OUTSIDE}); {action} again with --drift accept (the registry is "
                f"right: record the move) or --drift revert (the history is right: move it back)"
            )
        if how == "accept":
            return [
                self.record(task, d.alias, d.history, d.registry, "external", f"{OUTSIDE}; accepted by {self.actor}")
                for d in found
            ]
        return [self.move(task, d.alias, d.history, "revert", f"undo a move made {OUTSIDE}") for d in found]

    def move(
        self, task: str, alias: str, version: int | None, action: str, reason: str, mode: str | None = None
    ) -> HistoryEvent:
        """Point `alias` at `version` (None: remove it) and record the move."""
        previous = self.aliases(task).get(alias)
        if version is None:
            if previous is not None:
                self.client.delete_registered_model_alias(task, alias)
        else:
            self.client.set_registered_model_alias(task, alias, str(version))
        return self.record(task, alias, previous, version, action, reason, mode)

    def record(
        self,
        task: str,
        alias: str,
        previous: int | None,
        version: int | None,
        action: str,
        reason: str,
        mode: str | None = None,
    ) -> HistoryEvent:
        event = HistoryEvent(
            time=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            actor=self.actor,
            action=action,
            alias=alias,
            from_version=previous,
            to_version=version,
            reason=reason[:500],
            mode=mode,
        )
        self.client.set_registered_model_tag(task, f"{HISTORY_TAG}{time.time_ns():020d}", event.model_dump_json())
        return event
