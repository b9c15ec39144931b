"""AdapterRegistry: adapter versions per task on MLflow's model registry, with lineage to the base model.

The one entry point of the package. It opens the MLflow registry and hands the work to: versions.py (bases and
versions), promotion.py (promote, rollback, fetch, serving rules), aliases.py (aliases, history, drift) and
runs.py (training runs). Aliases production / previous-production / candidate; every alias move is appended to
the task's history (registered-model tags, one per event).
"""

from pathlib import Path

from mlflow import MlflowClient

from lora_core.peft_format import PeftConfig

from .aliases import AliasBook, Drift
from .digests import DigestCache
from .errors import UnknownTaskError
from .fleet import promote_all, select
from .locks import exclusive
from .paging import Pages
from .promotion import Promotions
from .records import BaseRecord, HistoryEvent, Lineage, Promotion, PromotionOutcome, VersionRecord
from .runs import RunTracking
from .settings import RegistrySettings
from .stores import TRANSFER_JOBS
from .versions import VersionCatalog


class AdapterRegistry:
    schema_ready: set[str] = set()  # embedded databases this process has opened once under the lock

    def __init__(self, settings: RegistrySettings | None = None, page_size: int | None = None):
        """page_size: the most results per search request (MLflow's own caps by default; tests use small pages)."""
        self.settings = settings or RegistrySettings.from_env()
        self._client = MlflowClient(self.settings.tracking_uri, registry_uri=self.settings.tracking_uri)
        if self.settings.embedded and self.settings.tracking_uri not in self.schema_ready:
            # MLflow creates its SQLite schema on first use; two processes doing it at once collide (runs started
            # together on a fresh home), so the first use happens under a lock, once per process.
            with exclusive(self.settings.home / "locks", "mlflow-database"):
                self._client.search_experiments(max_results=1)
            self.schema_ready.add(self.settings.tracking_uri)
        self.digests = DigestCache(self.settings.digests)
        self._book = AliasBook(self._client, self.settings.actor, Pages(self._client, page_size))
        self.runs = RunTracking(self._client, self.settings)
        self.catalog = VersionCatalog(self._client, self.runs, self._book, self.settings, self.digests)
        self.promotions = Promotions(self.catalog, self._client, self._book, self.settings, self.digests)

    # ---- base models -------------------------------------------------------------------------
    def register_base(
        self, path: str | Path, name: str | None = None, source: str | None = None, revision: str | None = None
    ) -> BaseRecord:
        """Register a base model folder once per weight fingerprint; the same weights return the same record."""
        return self.catalog.register_base(path, name, source, revision)

    def find_base(self, fingerprint: str) -> BaseRecord | None:
        return self.catalog.find_base(fingerprint)

    def check_base(self, record: VersionRecord, base_path: str | Path) -> str:
        """Refuse to use `record` on a base whose weights differ from its training base; returns the fingerprint."""
        return self.catalog.check_base(record, base_path)

    # ---- adapter versions --------------------------------------------------------------------
    def register(
        self,
        task: str,
        adapter_dir: str | Path,
        base: BaseRecord,
        dataset_fingerprint: str,
        metrics: dict[str, float],
        merged_dir: str | Path | None = None,
        run_id: str | None = None,
        description: str = "",
        input_example: list[str] | None = None,
        spectrum: dict[str, float] | None = None,
        *,
        loader_module: str,
        gate: str | None = None,
        extra_tags: dict[str, str] | None = None,
    ) -> VersionRecord:
        """A new version of `task`, an MLflow Model (mlflow_model.py) whose weights and manifests are logged to the
        run (a run of its own when `run_id` is None); lineage in tags; alias `candidate`.

        loader_module: the module mlflow.pyfunc loads the model with (shipped with its package).
        input_example: texts the model's input example shows.
        spectrum: numbers from the low-rank analysis (rank_at_95, elbow, ...), one version tag each, so the UI
        sorts and filters by them.
        gate: the evaluation gate's verdict, "passed" or "blocked" (tag loraops.gate; `loraops promote
        --all-passing` promotes only candidates whose gate passed).
        extra_tags: more version tags, each named `loraops.<something>` and none of the lineage tags above (a search
        records its study and best trial this way)."""
        return self.catalog.register(
            task,
            adapter_dir,
            base,
            dataset_fingerprint,
            metrics,
            loader_module=loader_module,
            merged_dir=merged_dir,
            run_id=run_id,
            description=description,
            input_example=input_example,
            spectrum=spectrum,
            gate=gate,
            extra_tags=extra_tags,
        )

    def resolve(self, task: str, ref: str | int | None = None) -> VersionRecord:
        """The version an alias points at (default production) or a version number, with its lineage."""
        return self.catalog.resolve(task, ref)

    def list_versions(
        self, task: str | None = None, base: str | None = None, alias: str | None = None, task_prefix: str = ""
    ) -> list[VersionRecord]:
        """Versions of one task or of every task, by task and version; `base` filters by base name or fingerprint
        prefix, `alias` to the versions it points at, `task_prefix` by the start of task names. Costs one request
        per page of tasks and per page of versions, however many tasks."""
        return self.catalog.list_versions(task, base, alias, task_prefix)

    def lineage(self, task: str) -> Lineage:
        """base model(s) -> versions -> promotions for one task."""
        return self.catalog.lineage(task)

    # ---- promotion ---------------------------------------------------------------------------
    def promote(
        self,
        task: str,
        version: int | str,
        mode: str = "adapter",
        target: str | None = None,
        reason: str = "",
        progress: bool = True,
        serve_with: str = "any",
        drift: str | None = None,
    ) -> Promotion:
        """Upload + verify under <target>/<task>/v<version>/<mode>/, manifest last; only then move `production`.

        serve_with: an engine (engines.py) whose loading rules an adapter must meet; checked before any upload.
        drift: how to settle aliases moved outside loraops (aliases.py): None refuses, "accept" or "revert"."""
        return self.promotions.promote(task, version, mode, target, reason, progress, serve_with, drift)

    def promote_passing(
        self,
        base: str | None = None,
        task_prefix: str = "",
        mode: str = "adapter",
        target: str | None = None,
        jobs: int = TRANSFER_JOBS,
        reason: str = "gate passed",
        serve_with: str = "any",
        drift: str | None = None,
    ) -> list[PromotionOutcome]:
        """Promote the candidate of every task whose gate passed (fleet.py), tasks in parallel with at most `jobs`
        objects or parts in flight in all; `base` and `task_prefix` narrow the tasks. One outcome per candidate, by
        task: promoted, skipped (already production, gate blocked, no verdict) or failed (its aliases unmoved)."""
        chosen, skipped = select(self.list_versions(base=base, alias="candidate", task_prefix=task_prefix))
        done = promote_all(self.promotions, chosen, mode, target, jobs, reason, serve_with, drift)
        return sorted(skipped + done, key=lambda outcome: outcome.task)

    def check_servable(
        self, record: VersionRecord, engine: str, folder: Path, config: PeftConfig | None = None
    ) -> None:
        """Refuse (NotServableError) an adapter that `engine` would not load next to its base; `config`: the
        folder's adapter_config.json when the caller has read it already."""
        self.promotions.check_servable(record, engine, folder, config)

    def rollback(self, task: str, reason: str = "", drift: str | None = None) -> list[HistoryEvent]:
        """production <- previous-production; previous-production <- the version before that, if any.
        Returns the production and previous-production moves (after any settled drift)."""
        return self.promotions.rollback(task, reason, drift)

    def fetch(self, task: str, ref: str | int | None = None, mode: str = "adapter") -> Path:
        """A verified local copy in the content-addressed cache: from the promoted copy if any, else MLflow."""
        return self.promotions.fetch(task, ref, mode)

    # ---- aliases -----------------------------------------------------------------------------
    def aliases(self, task: str) -> dict[str, int]:
        return self._book.aliases(task)

    def history(self, task: str) -> list[HistoryEvent]:
        """Every alias move of `task`, oldest first."""
        return self._book.history(task)

    def drift(self, task: str | None = None, task_prefix: str = "") -> list[Drift]:
        """The aliases moved outside loraops (aliases.py), where the registry and the history disagree: of `task`,
        or of every task (whose name starts with `task_prefix`) in one request per page of tasks."""
        if task:
            return self._book.drift(task)
        return [d for name, state in sorted(self._book.states(task_prefix).items()) for d in state.drift(name)]

    def check_drift(self, task: str) -> None:
        """Raise DriftError when an alias of `task` was moved outside loraops; a task with no versions has none."""
        try:
            self._book.settle(task, None, "promote")
        except UnknownTaskError:
            pass

    def experiment(self, name: str) -> str:
        """The id of experiment `name`, created (with artifacts under $LORAOPS_HOME when embedded) if missing."""
        return self.runs.experiment(name)
