"""Following one call's flow runs on the pool: each task's state, the step it is at and its metric.

The state and step come from Prefect (the flow runs, and the task run each one is running: a step of the flow is a
Prefect task, tasks.py), the metric from the task's MLflow run (the last training loss, then the gate metric once
evaluated). A look costs the same few requests however many tasks there are; MLflow is asked less often than Prefect.
"""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from registry.run_watch import RunProgress, RunWatch

from .fanout import Submitted

FINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
PAGE = 200  # Prefect's default and largest page of flow or task runs
EXCEPTION_PREFIX = "Flow run encountered an exception: "
T = TypeVar("T")


@dataclass
class Progress:
    """One task of the call as last seen."""

    task: str
    flow_run_id: str
    flow_run: str = "-"  # its name: <task>-<time> while it runs, <task>-v<N> once registered
    state: str = "Submitted"  # Prefect's state name: Scheduled, Late, Pending, Running, Completed, Failed, ...
    state_type: str = "SCHEDULED"
    step: str = "-"
    metric: str = "-"
    message: str = ""
    mlflow_run: str | None = None
    started: datetime | None = None
    ended: datetime | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.state_type in FINAL

    @property
    def completed(self) -> bool:
        return self.state_type == "COMPLETED"

    def reason(self) -> str:
        """Why it did not complete, in one line: the flow's error without Prefect's preamble."""
        text = self.message.strip()
        if text.startswith(EXCEPTION_PREFIX):  # "...: StepFailed: <message>" -> "<message>"
            kind, sep, rest = text.removeprefix(EXCEPTION_PREFIX).partition(": ")
            text = rest if sep and kind.isidentifier() else text
        return (text.splitlines() or [self.state])[0]


def metric_text(metrics: Mapping[str, float], gate_metric: str) -> str:
    """The gate metric base -> adapter once evaluated, else the last training loss, else '-'."""
    adapter, base = metrics.get(f"adapter_{gate_metric}"), metrics.get(f"base_{gate_metric}")
    if adapter is not None:
        return f"{gate_metric} {base:.3f} -> {adapter:.3f}" if base is not None else f"{gate_metric} {adapter:.3f}"
    if "train_loss" in metrics:
        return f"loss {metrics['train_loss']:.3f}"
    return "-"


def step_of(task_run_name: str) -> str:
    """Prefect names a task run `<task name>-<suffix>`; the task name is the step (tasks.py)."""
    return task_run_name.rsplit("-", 1)[0] if "-" in task_run_name else task_run_name


def paged(read: Callable[..., list[T]]) -> list[T]:
    found: list[T] = []
    while True:
        page = read(limit=PAGE, offset=len(found))
        found += page
        if len(page) < PAGE:
            return found


class Follower:
    def __init__(
        self,
        submitted: Sequence[Submitted],
        gate_metrics: Mapping[str, str],
        watch: RunWatch | None,
        metrics_every: float = 6.0,
    ):
        """`gate_metrics`: each task's gate metric; `watch`: its MLflow runs (None: no metric column)."""
        self.rows = {s.flow_run_id: Progress(s.task, s.flow_run_id) for s in submitted}
        self.gate_metrics, self.watch, self.metrics_every = gate_metrics, watch, metrics_every
        self.metrics_at = 0.0

    def look(self) -> list[Progress]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            TaskRunFilter,
            TaskRunFilterState,
            TaskRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        ids = FlowRunFilter(id=FlowRunFilterId(any_=[UUID(i) for i in self.rows]))
        running = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING])))
        with get_client(sync_client=True) as client:
            flow_runs = paged(lambda **page: client.read_flow_runs(flow_run_filter=ids, **page))
            task_runs = paged(
                lambda **page: client.read_task_runs(flow_run_filter=ids, task_run_filter=running, **page)
            )
        for run in flow_runs:
            self.update_flow_run(self.rows[str(run.id)], run)
        for task_run in task_runs:
            if task_run.flow_run_id and str(task_run.flow_run_id) in self.rows:
                self.rows[str(task_run.flow_run_id)].step = step_of(task_run.name)
        self.update_metrics(force=all(r.final for r in self.rows.values()))
        return list(self.rows.values())

    @staticmethod
    def update_flow_run(row: Progress, run: Any) -> None:
        row.flow_run, row.started, row.ended = run.name, run.start_time, run.end_time
        if run.state is not None:
            row.state, row.state_type, row.message = run.state.name, run.state.type.value, run.state.message or ""

    def update_metrics(self, force: bool = False) -> None:
        if self.watch is None or (not force and time.monotonic() - self.metrics_at < self.metrics_every):
            return
        self.metrics_at = time.monotonic()
        try:
            newest: dict[str, RunProgress] = self.watch.look()
        except Exception:  # noqa: BLE001 - only the metric column: a tracking server hiccup must not stop following
            return
        for row in self.rows.values():
            if found := newest.get(row.task):
                row.mlflow_run, row.metrics = found.run_id, found.metrics
                row.metric = metric_text(found.metrics, self.gate_metrics.get(row.task, "loss"))


def follow(
    follower: Follower, show: Callable[[list[Progress]], None], every: float = 2.0, sleep=time.sleep
) -> list[Progress]:
    """Look every `every` seconds and show what was seen, until every flow run is final."""
    while True:
        rows = follower.look()
        show(rows)
        if all(row.final for row in rows):
            return rows
        sleep(every)


def max_overlap(spans: Sequence[tuple[datetime, datetime]]) -> int:
    """The most spans [start, end) that were open at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most
