"""`loraops run` on a team's Prefect server: one flow run per task on the work pool, whose concurrency limit alone
decides how many run at once (its workers pick them up; Prefect retries what tasks.py marks retryable).

All flow runs come from one deployment per pool, `train_adapter/loraops-run@<pool>` (no schedule, no limit of its
own), with the task file as the parameter `spec_path`. Its name has a character no task name has, so it never
meets the per-task deployments of `loraops schedule`.

**What a worker can read.** A worker opens the task file, its data (`data.path`, `data.test_path`), its base
(`base.model` when a folder) and its `promotion.target` when a folder. `s3://` and any other `scheme://` location
is reached by the workers as by this machine. A local path is reachable when it lies under a shared root:

1. the roots the pool declares in the environment of its base job template (`LORAOPS_SHARED_ROOTS`, folders
   separated by `:`, and the workers' `LORAOPS_HOME`): what every flow run of the pool is started with;
2. the roots this shell declares in `LORAOPS_SHARED_ROOTS` (e.g. an NFS mount every worker has at the same path);
3. with no root declared by either: a `process` pool whose Prefect server is on a loopback address runs its
   workers on this machine, so they see every path here; any other pool (Kubernetes, Docker, a remote server)
   sees none, only `s3://`.

A path outside them is refused before anything is submitted, one line naming the file and the fix. Relative
`base.model` and `promotion.target` folders are relative to this shell's folder, which no worker shares: refused.
"""

import ipaddress
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlparse
from uuid import UUID

from registry.errors import ServerUnavailable

from .errors import DataError, SpecError
from .spec import SearchSpec, TaskSpec

DEFAULT_POOL = "loraops-cpu"
ROOTS_VARIABLE = "LORAOPS_SHARED_ROOTS"
PROCESS_POOL = "process"
T = TypeVar("T")


def deployment_name(pool: str) -> str:
    return f"loraops-run@{pool}"


@dataclass(frozen=True)
class WorkerView:
    """What the workers of `pool` see of this machine's files: everything (`whole_host`), or what is under `roots`."""

    pool: str
    roots: tuple[Path, ...]
    whole_host: bool

    def sees(self, path: str) -> bool:
        if "://" in path or self.whole_host:
            return True
        found = Path(path).expanduser().resolve()
        return any(found.is_relative_to(root) for root in self.roots)

    def describe(self) -> str:
        if self.roots:
            return f"its workers see only {', '.join(map(str, self.roots))}"
        return f"its workers share no folder with this machine (declare one in {ROOTS_VARIABLE})"


def declared_env(base_job_template: Mapping[str, Any]) -> dict[str, str]:
    """The environment a pool gives every flow run: its job template's `env` variable default, and an `env`
    mapping written into the job configuration itself."""
    variable = base_job_template.get("variables", {}).get("properties", {}).get("env", {})
    configured = base_job_template.get("job_configuration", {}).get("env")
    env = dict(variable.get("default") or {})
    if isinstance(configured, dict):
        env |= configured
    return {str(k): str(v) for k, v in env.items() if v is not None}


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def worker_view(
    pool: str, pool_type: str, pool_env: Mapping[str, str], caller_env: Mapping[str, str], api_url: str
) -> WorkerView:
    """The rule of this module's docstring: declared roots if any, else the whole host for a local process pool."""
    declared = [pool_env.get(ROOTS_VARIABLE, ""), pool_env.get("LORAOPS_HOME", ""), caller_env.get(ROOTS_VARIABLE, "")]
    roots = tuple(
        dict.fromkeys(Path(r).expanduser().resolve() for text in declared for r in text.split(os.pathsep) if r.strip())
    )
    whole_host = not roots and pool_type == PROCESS_POOL and is_loopback(api_url)
    return WorkerView(pool, roots, whole_host)


def worker_paths(spec: TaskSpec) -> Iterator[tuple[str, str]]:
    """(field, location) of everything a worker opens for this task."""
    yield "task file", str(spec.source)
    yield "data.path", spec.resolve(spec.data.path) or ""
    if spec.data.test_path:
        yield "data.test_path", spec.resolve(spec.data.test_path) or ""
    local_base = spec.base.model != "default" and (
        Path(spec.base.model).expanduser().is_dir() or spec.base.model.startswith(("/", "./", "../", "~"))
    )
    if local_base:
        yield "base.model", spec.base.model
    if spec.promotion.target and "://" not in spec.promotion.target:
        yield "promotion.target", spec.promotion.target


def check_reachable(spec: TaskSpec, view: WorkerView) -> None:
    """Every location of the task where the pool's workers can open it; else one line naming it and the fix."""
    for field, location in worker_paths(spec):
        error = DataError if field.startswith("data.") else SpecError
        if field in ("base.model", "promotion.target") and not Path(location).expanduser().is_absolute():
            raise error(
                f"{spec.source}: {field} {location!r} is relative to this shell's folder, which the workers of "
                f"pool {view.pool!r} do not share; give an absolute path under a shared root"
            )
        if not view.sees(location):
            raise error(
                f"{spec.source}: {field} {location} is on this machine only and pool {view.pool!r} cannot read it "
                f"({view.describe()}); put it on s3:// or under a shared root, or run here with --local"
            )


class Submitted(NamedTuple):
    task: str
    spec_path: str
    flow_run_id: str


def pool_slots(pool: str) -> str:
    """The global concurrency limit that bounds the flow runs of `pool` working at once; each takes one slot
    (flows.pool_slot). Prefect checks a pool's own limit when a worker polls, so two workers polling at once can
    both start a run past it (PrefectHQ/prefect#10771: seen here, three runs under a limit of two); a slot of a
    global limit is taken atomically on the server."""
    return f"loraops-pool-{pool}"


def sync_pool_slots(client: Any, pool: Any) -> None:
    """The pool's slots sized to its concurrency limit (a prefect WorkPool), or removed when it has none."""
    from prefect.exceptions import ObjectNotFound

    if pool.concurrency_limit is None:
        try:
            client.delete_global_concurrency_limit_by_name(pool_slots(pool.name))
        except ObjectNotFound:
            pass
    else:
        client.upsert_global_concurrency_limit_by_name(pool_slots(pool.name), pool.concurrency_limit)


def ask_pool(name: str, question: Callable[[Any], T]) -> T:
    """`question(client)` to the Prefect server about work pool `name`: a missing pool or a server that does not
    answer is one line with the fix."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    url = os.environ.get("PREFECT_API_URL", "")
    try:
        with get_client(sync_client=True) as client:
            return question(client)
    except ObjectNotFound:
        raise SpecError(
            f"work pool {name!r} does not exist on {url}; create it (prefect work-pool create {name} --type "
            f"process) or start the stack (bash infra/stack.sh up), or set LORAOPS_WORK_POOL"
        ) from None
    except Exception as e:  # noqa: BLE001 - httpx/ssl errors: the server does not answer
        raise ServerUnavailable(
            f"the Prefect server at {url} does not answer ({type(e).__name__}); start it or fix PREFECT_API_URL"
        ) from None


def ready_pool(name: str) -> Any:
    """The work pool `name` (a prefect WorkPool), checked: it exists, is not paused, may run flows, and (unless
    Prefect's cloud runs it) has a worker online. Each failure is one line with the fix."""
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    online = WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
    pool, workers = ask_pool(
        name, lambda c: (c.read_work_pool(name), c.read_workers_for_work_pool(name, worker_filter=online, limit=1))
    )
    if pool.is_paused:
        raise SpecError(f"work pool {name!r} is paused: nothing would run; resume it (prefect work-pool resume {name})")
    if pool.concurrency_limit == 0:
        raise SpecError(
            f"work pool {name!r} has concurrency limit 0: nothing would run; raise it "
            f"(prefect work-pool set-concurrency-limit {name} 2)"
        )
    if not workers and not (pool.is_push_pool or pool.is_managed_pool):
        raise SpecError(
            f"work pool {name!r} has no worker online: nothing would run; start one (prefect worker start --pool "
            f"{name}, or bash infra/stack.sh up), or run here with --local"
        )
    return pool


class CheckedPool(NamedTuple):
    pool: Any  # prefect's WorkPool
    view: WorkerView  # what its workers can read


def check_pool_tasks(name: str, specs: Sequence[TaskSpec]) -> CheckedPool:
    """ready_pool, then every file of every task where the pool's workers can read it."""
    pool = ready_pool(name)
    url = os.environ.get("PREFECT_API_URL", "")
    view = worker_view(name, pool.type, declared_env(pool.base_job_template), os.environ, url)
    for spec in specs:
        check_reachable(spec, view)
    return CheckedPool(pool, view)


def submit(
    pool: str, specs: Sequence[TaskSpec], search: SearchSpec | None = None, run_id: str | None = None
) -> list[Submitted]:
    """One train_adapter flow run per task on `pool`, from the pool's deployment (created or updated here); `search`
    and `run_id` as train_adapter takes them. If a submission fails, the runs already submitted are cancelled: a
    call submits all its tasks or none."""
    from prefect.client.orchestration import get_client

    from .flows import TrainParameters, train_adapter

    deployment_id = UUID(apply_deployment(pool, train_adapter, deployment_name(pool)))
    submitted: list[Submitted] = []
    try:
        with get_client(sync_client=True) as client:
            sync_pool_slots(client, client.read_work_pool(pool))
            for spec in specs:
                run = client.create_flow_run_from_deployment(
                    deployment_id,
                    parameters=TrainParameters(spec_path=str(spec.source), search=search, run_id=run_id).sent(),
                    tags=["loraops", spec.task],
                )
                submitted.append(Submitted(spec.task, str(spec.source), str(run.id)))
    except BaseException:
        cancel([s.flow_run_id for s in submitted])
        raise
    return submitted


def apply_deployment(pool: str, flow: Any, name: str) -> str:
    """`flow`'s deployment `name` on `pool` (created or updated); returns its id."""
    from prefect.deployments.runner import EntrypointType, RunnerDeployment

    # A module entrypoint: workers import pipelines.flows from their own installation, no path of this machine.
    deployment = flow.to_deployment(
        name=name,
        work_pool_name=pool,
        entrypoint_type=EntrypointType.MODULE_PATH,
        tags=["loraops"],
        description=f"loraops on pool {pool}: one flow run per task file (parameter spec_path)",
    )
    assert isinstance(deployment, RunnerDeployment)  # called from sync code: the deployment, not a coroutine
    return str(deployment.apply())


def cancel(flow_run_ids: Sequence[str]) -> None:
    """Prefect's cancellation: a run not started yet ends Cancelled, a running one is stopped by its worker (its
    MLflow run ends KILLED)."""
    if not flow_run_ids:
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        for flow_run_id in flow_run_ids:
            try:
                client.set_flow_run_state(flow_run_id, Cancelling(message="cancelled by loraops run"))
            except Exception:  # noqa: BLE001 - best effort: it may have finished meanwhile
                pass
