"""How `loraops run` shows the flow runs it follows on the pool: a live table on a terminal, a line per change
elsewhere (a log, CI)."""

from collections.abc import Callable

from ..follow import Progress

COLUMNS = ("task", "state", "step", "metric", "flow run")


def cells(row: Progress) -> tuple[str, ...]:
    return row.task, row.state, row.step if not row.final else "-", row.metric, row.flow_run


class LiveTable:
    """A rich Live table, redrawn at each look (rich comes with Prefect)."""

    def __enter__(self) -> "LiveTable":
        from rich.live import Live

        self.live = Live(self.table([]), auto_refresh=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def __call__(self, rows: list[Progress]) -> None:
        self.live.update(self.table(rows), refresh=True)

    @staticmethod
    def table(rows: list[Progress]):
        from rich.table import Table

        styles = {"COMPLETED": "green", "FAILED": "red", "CRASHED": "red", "CANCELLED": "yellow", "RUNNING": "cyan"}
        table = Table(*COLUMNS)
        for row in rows:
            values = list(cells(row))
            values[1] = f"[{styles[row.state_type]}]{row.state}[/]" if row.state_type in styles else row.state
            table.add_row(*values)
        return table


class ChangeLines:
    """`<task>: <state> [at <step>] [<metric>]`, printed when a task's state or step changes."""

    def __init__(self, print_: Callable[[str], None] = print):
        self.print_ = print_
        self.seen: dict[str, tuple[str, str]] = {}

    def __enter__(self) -> "ChangeLines":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __call__(self, rows: list[Progress]) -> None:
        for row in rows:
            state, step, metric, _ = cells(row)[1:]
            if self.seen.get(row.task) != (state, step):
                self.seen[row.task] = (state, step)
                at = f" at {step}" if step != "-" else ""
                shown = f", {metric}" if metric != "-" else ""
                self.print_(f"{row.task}: {state}{at}{shown}")
