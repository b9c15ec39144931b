"""`loraops run | schedule | predict`: the flow on the embedded default or a team's servers, and predictions."""

import os
from pathlib import Path

from registry import RegistrySettings

from .. import steps
from ..preflight import preflight
from ..prefect_server import local_prefect_server
from ..spec import load_spec


def prefect_defaults(settings: RegistrySettings) -> None:
    """Before Prefect is imported: its state under $LORAOPS_HOME; with no PREFECT_API_URL it starts its own
    local server for the run. Anonymous usage reporting stays off (this machine may have no network)."""
    os.environ.setdefault("PREFECT_HOME", str(settings.home / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def validate(paths: list[str]) -> list:
    """Every task file and its data checked before any flow starts: bad input registers nothing."""
    settings = RegistrySettings.from_env()
    specs = [load_spec(p) for p in paths]
    for spec in specs:
        preflight(spec, settings)
        steps.prepare_data(spec, settings.home / "work" / spec.task)
    return specs


def run(paths: list[str], print_=print) -> list[dict]:
    specs = validate(paths)
    settings = RegistrySettings.from_env()
    prefect_defaults(settings)
    with local_prefect_server(settings.home):
        return [report(run_flow(path), spec, print_) for path, spec in zip(paths, specs)]


def run_flow(path: str) -> dict:
    from ..flows import train_adapter
    return train_adapter(str(Path(path).resolve()))


def report(result: dict, spec, print_=print) -> dict:
    e, t = result["evaluation"], result["trained"]
    metric = spec.gate.metric
    print_(f"{result['task']}: v{result['version']} trained {t['steps']} steps in {t['seconds']:.0f}s; "
           f"{metric} base {e['base'][metric]:.3f} -> adapter {e['adapter'][metric]:.3f} "
           f"(merged {e['merged'][metric]:.3f}, gap {e['merge_gap']:.1e}); "
           f"rank for 95% of |dW|^2: {result['analysis']['recommended_rank']['95']} of r={result['analysis']['r']}")
    if result["promotion"]:
        print_(f"{result['task']}: promoted v{result['version']} ({result['promotion']['mode']}) to {result['promotion']['uri']}")
    else:
        print_(f"{result['task']}: not promoted ({'; '.join(e['reasons']) or 'promotion.auto is false'})")
    return result


def schedule(path: str, cron: str, apply_only: bool = False, print_=print) -> str:
    """A deployment of train_adapter for this task on `cron`, at most one run at a time."""
    spec = validate([path])[0]
    prefect_defaults(RegistrySettings.from_env())
    from prefect.deployments.runner import EntrypointType
    from ..flows import train_adapter
    # A module entrypoint: the runner imports pipelines.flows as a package module (its imports are relative).
    deployment = train_adapter.to_deployment(name=spec.task, cron=cron, parameters={"spec_path": str(Path(path).resolve())},
                                             concurrency_limit=1, tags=["loraops", spec.task],
                                             entrypoint_type=EntrypointType.MODULE_PATH,
                                             description=f"train, evaluate and ship the {spec.task} adapter")
    deployment_id = str(deployment.apply())
    print_(f"deployment train_adapter/{spec.task} ({deployment_id}) on cron {cron!r}, concurrency limit 1")
    if not apply_only:
        from prefect import serve
        print_("serving it; stop with Ctrl-C")
        serve(deployment)
    return deployment_id


def predict(ref: str, texts: list[str], print_=print) -> list[dict]:
    from ..serving import AdapterSwitcher
    results = AdapterSwitcher().predict(ref, texts)
    for r in results:
        answer = r["completion"] if "completion" in r else f"{r['label']}  (p={r['probability']:.2f}, {r['task']} v{r['version']})"
        print_(f"{r['text']!r} -> {answer}")
    return results
