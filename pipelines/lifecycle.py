"""How a flow's MLflow run ends: FINISHED, FAILED with the reason, or KILLED when interrupted.

    with RunLifecycle(registry.runs, spec.task, run_id) as run:
        run.at("train")
        ...

A failure the user can act on (bad input met late, a diverged training, a failed merge check, a server fault after
retries, a gate that blocks) ends the run FAILED with the reason in its tag `loraops.failure` and comes out as one
`RunError` that names the step and the run. Anything else is a bug: the run ends FAILED and its traceback shows.
"""

import logging
import signal
import sys
from types import TracebackType

from registry import RunTracking
from registry.errors import RegistryError
from registry.runs import RunStatus

from .errors import GateBlocked, InputError, Interrupted, RunError, StepFailed


def expected(error: BaseException) -> bool:
    """An error with a message for the user, as opposed to a bug."""
    known: tuple[type[BaseException], ...] = (InputError, RunError, RegistryError, OSError)
    for module, name in (("lora_core.errors", "LoraError"), ("mlflow.exceptions", "MlflowException")):
        if module in sys.modules:
            known += (getattr(sys.modules[module], name),)
    return isinstance(error, known)


class NoTracebackForExpected(logging.Filter):
    """Prefect logs a failed flow or task run with its traceback; for an error with a message for the user the
    message is the report (a traceback there reads like a crash), so the record keeps its message only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None and expected(record.exc_info[1]):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_expected_failures() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoTracebackForExpected) for f in logger.filters):
            logger.addFilter(NoTracebackForExpected())


def interrupted_by(error: BaseException) -> str | None:
    """The signal that stopped the run: ours (Ctrl-C, SIGTERM in the CLI), or Prefect's TerminationSignal (its flow
    engine turns SIGTERM into one while a flow runs); None for any other error."""
    if isinstance(error, Interrupted):
        return error.signal_name
    if isinstance(error, KeyboardInterrupt):
        return "SIGINT"
    termination = getattr(sys.modules.get("prefect.exceptions"), "TerminationSignal", None)
    if termination is not None and isinstance(error, termination):
        return signal.Signals(error.signal).name
    return None


def runner_control() -> bool:
    """A Prefect runner or worker sent this SIGTERM to cancel the flow run (it says so first, on its control
    channel); then Prefect's own TerminationSignal must reach its engine unchanged."""
    listener = sys.modules.get("prefect._internal.control_listener")
    return listener is not None and getattr(listener, "get_intent", lambda: None)() is not None


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class RunLifecycle:
    def __init__(self, runs: RunTracking, task: str, run_id: str):
        self.runs, self.task, self.run_id, self.step = runs, task, run_id, "start"

    def at(self, step: str) -> None:
        """The step now running: a failure names it."""
        self.step = step

    def __enter__(self) -> "RunLifecycle":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if error is None:
            self.end("FINISHED", None)
        elif signal_name := interrupted_by(error):
            self.end("KILLED", f"{self.step}: interrupted ({signal_name})")
            if not runner_control():  # a runner's cancel stays Prefect's TerminationSignal: it ends the run Cancelled
                raise Interrupted(signal_name, self.task, self.run_id) from error
        elif isinstance(error, GateBlocked):
            self.end("FAILED", f"gate: {'; '.join(error.reasons)}")
        else:
            reason = one_line(error)
            ended = self.end("FAILED", f"{self.step}: {reason}")
            if expected(error) and not isinstance(error, StepFailed):
                raise StepFailed(self.task, self.step, self.run_id, reason, ended) from error

    def end(self, status: RunStatus, reason: str | None) -> bool:
        """End the run; False when the tracking server could not be told (the failure being reported wins)."""
        try:
            self.runs.end(self.run_id, status, reason)
            return True
        except Exception as e:  # noqa: BLE001 - the server may be the thing that failed
            print(f"{self.task}: could not end MLflow run {self.run_id} as {status} ({one_line(e)})", file=sys.stderr)
            return False
