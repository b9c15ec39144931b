"""Every error a user of `pipelines` can meet, in one module that imports nothing heavy (the CLI maps them fast).

Two families, two exit codes (DESIGN.md "Error and run lifecycle"):
- `InputError` (exit 2): bad input, found before any work starts; nothing is written.
- `RunError` (exit 1): a failure inside a run; the message names what failed and the MLflow run to look at.
"""


class InputError(ValueError):
    """Bad input: the message names the cause and the fix. Nothing was registered or promoted."""


class SpecError(InputError):
    """The task file is invalid; the message names the field and the fix."""


class SettingError(InputError):
    """An environment variable loraops reads has a bad value; the message names the variable and the fix."""


class InputFileError(InputError):
    """A file the user named is missing, unreadable, or not a regular file (a directory, FIFO, socket, device)."""


class DataError(InputError):
    """The data is unusable; the message names the first bad rows and the fix."""


class BaseModelError(InputError):
    """The base model cannot be found or loaded; the message says where it was looked for."""


class RunError(RuntimeError):
    """A failure inside a run (after its MLflow run started), or of a server loraops started for it."""


class StepFailed(RunError):
    """A step of the flow failed: `step` names it, `run_id` is the MLflow run that ended FAILED with the reason."""

    def __init__(self, task: str, step: str, run_id: str, reason: str, run_ended: bool = True):
        run = f"the MLflow run {run_id} ended FAILED" if run_ended else f"see the MLflow run {run_id}"
        super().__init__(f"{task}: {step} failed: {reason}; {run}")
        self.task, self.step, self.run_id, self.reason, self.run_ended = task, step, run_id, reason, run_ended

    def __reduce__(self):  # copies and pickles (Prefect's states) rebuild it from its fields, not its message
        return type(self), (self.task, self.step, self.run_id, self.reason, self.run_ended)


class GateBlocked(RunError):
    """The adapter did not pass the gate: registered as `candidate`, production unchanged, nothing promoted."""

    def __init__(self, task: str, version: int, run_id: str, reasons: list[str]):
        super().__init__(
            f"{task}: gate blocked v{version} ({'; '.join(reasons)}); registered as candidate, "
            f"production unchanged; see MLflow run {run_id}, or promote it deliberately with "
            f"`loraops promote {task} --version {version}`"
        )
        self.task, self.version, self.run_id, self.reasons = task, version, run_id, reasons

    def __reduce__(self):
        return type(self), (self.task, self.version, self.run_id, self.reasons)


class MergeCheckError(RunError):
    """Merged and unmerged models disagree beyond gate.merge_tolerance: the merge is not exact."""


class TrainingError(RunError):
    """Training cannot go on: no trainable parameters, a checkpoint of another model, a diverged loss."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite: the learning rate is too high for this adapter and data."""


class SearchFailed(RunError):
    """A search (training.search) ended with no trial that completed: every one was pruned, diverged or failed."""


class StudyError(InputError):
    """The search's Optuna study cannot be used for this task: another task's, other data or another space."""


class TorchrunError(TrainingError):
    """A torchrun worker failed (training.nproc > 1 or nnodes > 1)."""


class TrainingNodeError(RunError):
    """A training node could not take part in a run; the message says why and what to do."""


class PrefectServerError(RunError):
    """The local Prefect server did not come up; the message has its last output."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM: the run ends KILLED. A KeyboardInterrupt, so Prefect marks the flow run Crashed.
    `task` and `run_id` once the task's MLflow run had started (the line names them; a rerun resumes)."""

    def __init__(self, signal_name: str, task: str | None = None, run_id: str | None = None):
        super().__init__(f"interrupted ({signal_name})")
        self.signal_name, self.task, self.run_id = signal_name, task, run_id

    def __reduce__(self):
        return type(self), (self.signal_name, self.task, self.run_id)

    def line(self) -> str:
        if self.run_id is None:
            return f"interrupted ({self.signal_name})"
        return (
            f"interrupted ({self.signal_name}): {self.task}'s MLflow run {self.run_id} ended KILLED; the same command "
            f"again resumes training from its last checkpoint"
        )


class ServeError(InputError):
    """`loraops serve` cannot start as asked (no adapter to serve, an unknown base, a port in use, an engine that
    is not installed); the message names the cause and the fix. No engine was started."""


class EngineFailed(RunError):
    """The serving engine died or did not answer: at its start (its last error line is in the message), or when
    told to load or unload an adapter."""
