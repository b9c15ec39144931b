"""The newest training run of each of a few tasks, with its latest metrics: what `loraops run` shows while the
pool's workers train.

One look costs one paged search over the tasks' experiments (`loraops-<task>`), whatever the number of tasks, plus
one lookup of each experiment not found yet (a task's first run creates it); a found id is kept.
"""

from collections.abc import Sequence
from typing import NamedTuple

from mlflow.entities import ViewType

from .paging import every
from .runs import RunTracking

RUNS_PAGE = 1_000  # the most runs MLflow returns per request of search_runs


class RunProgress(NamedTuple):
    run_id: str
    status: str  # RUNNING, FINISHED, FAILED or KILLED
    metrics: dict[str, float]  # the latest value of each


class RunWatch:
    def __init__(self, runs: RunTracking, tasks: Sequence[str], since_ms: int):
        """Runs of `tasks` started at or after `since_ms` (milliseconds since the epoch) count."""
        self.client, self.tasks, self.since_ms = runs.client, list(tasks), since_ms
        self.experiments: dict[str, str] = {}

    def look(self) -> dict[str, RunProgress]:
        """{task: its newest run} for the tasks that have one."""
        for task in self.tasks:
            if task not in self.experiments and (found := self.client.get_experiment_by_name(f"loraops-{task}")):
                self.experiments[task] = found.experiment_id
        if not self.experiments:
            return {}
        ids = list(self.experiments.values())

        def search(filter_string: str, max_results: int, page_token: str | None):
            return self.client.search_runs(
                ids,
                filter_string,
                run_view_type=ViewType.ALL,
                max_results=max_results,
                order_by=["attributes.start_time DESC"],
                page_token=page_token,
            )

        newest: dict[str, RunProgress] = {}
        for run in every(search, f"attributes.start_time >= {self.since_ms}", RUNS_PAGE):
            task = run.data.tags.get("loraops.task")
            if task in self.experiments and task not in newest:
                newest[task] = RunProgress(run.info.run_id, run.info.status, dict(run.data.metrics))
        return newest
