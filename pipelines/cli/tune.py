"""`loraops tune TASK.yaml [--trials N] [--timeout S]`: a search (training.search, or its defaults), then the best
trial's adapter through the gate, merge check, analysis, registration and promotion of `loraops run`."""

from pathlib import Path

from pydantic import ValidationError

from registry import RegistrySettings

from ..prefect_server import local_prefect_server
from ..results import FlowResult
from ..spec import SearchSpec, TaskSpec, load_spec, spec_error
from ..study import check_study, plan_study
from .run import prefect_defaults, prepare, report


def with_search(spec: TaskSpec, trials: int | None, timeout: float | None) -> SearchSpec:
    """The task's training.search (or the default space) with the command line's budget; the task file checked
    again with it, so `tune` refuses what the file would."""
    search = (spec.training.search or SearchSpec()).model_dump()
    search |= {k: v for k, v in (("trials", trials), ("timeout", timeout)) if v is not None}
    raw = spec.model_dump(mode="json", exclude_unset=True)  # as written: validators see the same fields set
    raw["training"]["search"] = search
    try:
        checked = TaskSpec.model_validate({**raw, "source": spec.source})
    except ValidationError as e:
        raise spec_error(f"{spec.source} with --trials/--timeout", e) from None
    assert checked.training.search is not None
    return checked.training.search


def tune(path: str, trials: int | None, timeout: float | None, print_=print) -> FlowResult:
    """Every check before the first trial: the task file with the budget, the data, the base, and the study (another
    task's name, other data or another space); then the flow with the search, here."""
    settings = RegistrySettings.from_env()
    spec = load_spec(path)
    search = with_search(spec, trials, timeout)
    with local_prefect_server(settings.home) as prefect_ready:
        task = prepare(Path(path).resolve(), spec, settings)
        check_study(plan_study(spec, search, task.prepared, settings))
        prefect_defaults(settings)
        prefect_ready()
        from ..flows import train_adapter

        result = train_adapter(str(task.path), prepared=task.prepared, search=search)
    found = result.search
    assert found is not None
    params = ", ".join(f"{k}={v:.3g}" for k, v in found.best_params.items())
    print_(
        f"{spec.task}: study {found.study} ({found.storage}): {found.ran} trial(s) run now, {found.trials} in all "
        f"({found.complete} complete, {found.pruned} pruned); best trial {found.best_trial}: validation "
        f"{found.metric} {found.best_value:.4f} with {params}"
    )
    return report(result, spec, print_)
