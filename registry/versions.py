"""Bases and adapter versions on MLflow's model registry: register, resolve, list, lineage.

One registered model per task (name = task slug); base models registered as `base.<slug>`, one version per weight
fingerprint. A new adapter version is an MLflow Model (mlflow_model.py) whose weights and manifests are logged to a
run, its lineage in tags (tags.py), alias `candidate`.
"""

import re
import tempfile
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .aliases import AliasBook
from .code_version import code_version
from .digests import DigestCache
from .errors import BaseMismatchError, RegistryError
from .fingerprint import CONFIG_FILE, fingerprint_weights, identify_base
from .manifest import MANIFEST_FILE, Manifest, scan_folder
from .mlflow_model import MODEL_DIR, write_model
from .names import (
    ALIASES,
    BASE_PREFIX,
    base_model_name,
    check_filter_value,
    check_task_name,
    check_task_prefix,
    parse_ref,
)
from .paging import Pages
from .records import BaseName, BaseRecord, Lineage, VersionRecord
from .runs import RunTracking
from .settings import RegistrySettings
from .tags import (
    GATE_VERDICTS,
    KIND,
    MANIFEST,
    TAG,
    base_record,
    base_tags,
    checked_extra_tags,
    version_record,
    version_tags,
)
from .transfer import seed
from .version_inputs import adapter_summary, check_inputs

FINGERPRINT_PREFIX = re.compile(r"[0-9a-f]{8,64}")


class VersionCatalog:
    """The bases and adapter versions of every task on one MLflow registry."""

    def __init__(
        self, client: MlflowClient, runs: RunTracking, book: AliasBook, settings: RegistrySettings, digests: DigestCache
    ):
        self.client, self.runs, self.book, self.settings, self.digests = client, runs, book, settings, digests
        self.pages: Pages = book.pages

    # ---- base models -------------------------------------------------------------------------
    def register_base(
        self, path: str | Path, name: str | None = None, source: str | None = None, revision: str | None = None
    ) -> BaseRecord:
        """Register a base model folder once per weight fingerprint; the same weights return the same record."""
        path = Path(path)
        identity = identify_base(path, self.digests)
        fingerprint, config = identity.fingerprint, identity.config
        name = name or config.name_or_path or path.name
        model = base_model_name(name)
        if found := self.find_base(fingerprint):
            return found
        self._ensure_model(model, {KIND: "base", TAG + "base.name": name})
        tags = base_tags(name, fingerprint, source or str(path.resolve()), revision, config.model_type)
        run = self.client.create_run(self.runs.experiment("loraops-bases"), run_name=f"base {name}", tags=tags)
        if (path / CONFIG_FILE).exists():
            self.client.log_artifact(run.info.run_id, str(path / CONFIG_FILE), "base")
        self.client.set_terminated(run.info.run_id)
        version = self.client.create_model_version(
            model, f"{run.info.artifact_uri}/base", run_id=run.info.run_id, tags=tags, await_creation_for=0
        )
        return base_record(version)

    def find_base(self, fingerprint: str) -> BaseRecord | None:
        quoted = fingerprint.replace("'", "")
        found = self.pages.versions(f"tags.`{KIND}` = 'base' and tags.`{TAG}base.fingerprint` = '{quoted}'")
        return next((base_record(v) for v in found), None)

    def check_base(self, record: VersionRecord, base_path: str | Path) -> str:
        """Refuse to use `record` on a base whose weights differ from its training base; returns the fingerprint."""
        actual = fingerprint_weights(base_path, self.digests)
        if actual != record.base_fingerprint:
            raise BaseMismatchError(
                f"{record.task} v{record.version} was trained on {record.base_name} (fingerprint "
                f"{record.base_fingerprint[:12]}), but {base_path} has fingerprint {actual[:12]}; "
                f"load it on its own base or retrain the task on this one"
            )
        return actual

    # ---- adapter versions --------------------------------------------------------------------
    def register(
        self,
        task: str,
        adapter_dir: str | Path,
        base: BaseRecord,
        dataset_fingerprint: str,
        metrics: dict[str, float],
        *,
        loader_module: str,
        merged_dir: str | Path | None = None,
        run_id: str | None = None,
        description: str = "",
        input_example: list[str] | None = None,
        spectrum: dict[str, float] | None = None,
        gate: str | None = None,
        extra_tags: dict[str, str] | None = None,
    ) -> VersionRecord:
        """See AdapterRegistry.register."""
        check_task_name(task)
        if gate not in (None, *GATE_VERDICTS):
            raise RegistryError(f"gate verdict {gate!r} is not one of {', '.join(GATE_VERDICTS)}; pass one or None")
        lora, task_type = adapter_summary(Path(adapter_dir))
        spectrum = spectrum or {}
        check_inputs(merged_dir, dataset_fingerprint, metrics, spectrum)
        folders = {"adapter": Path(adapter_dir)} | ({"merged": Path(merged_dir)} if merged_dir else {})
        manifests = {
            mode: Manifest(
                task=task, mode=mode, base_fingerprint=base.fingerprint, files=scan_folder(folder, self.digests)
            )
            for mode, folder in folders.items()
        }
        if same := self._same_version(task, manifests, base, dataset_fingerprint):
            return same  # re-registering identical bytes on the same base and data adds nothing
        own_run = run_id is None
        if run_id is None:
            run_id = self.runs.start(task, f"register {task}", {})
            self.runs.log_metrics(run_id, metrics)
        with tempfile.TemporaryDirectory() as tmp:
            write_model(Path(tmp) / MODEL_DIR, task_type, base, input_example or ["an example text"], loader_module)
            self.runs.log_artifacts(run_id, Path(tmp) / MODEL_DIR, MODEL_DIR)
        for mode, folder in folders.items():
            self._log_folder(run_id, folder, manifests[mode], f"{MODEL_DIR}/{mode}")
            seed(self.settings.cache, folder, manifests[mode])
        if own_run:
            self.runs.end(run_id)
        tags = version_tags(
            base,
            dataset_fingerprint,
            lora,
            code_version(),
            metrics,
            {mode: manifest.digest for mode, manifest in manifests.items()},
            spectrum,
            gate,
        )
        tags |= checked_extra_tags(tags, extra_tags or {})
        self._ensure_model(task, {KIND: "task"})
        artifact_uri = self.client.get_run(run_id).info.artifact_uri
        version = int(
            self.client.create_model_version(
                task,
                f"{artifact_uri}/{MODEL_DIR}",
                run_id=run_id,
                tags=tags,
                description=description,
                await_creation_for=0,
            ).version
        )
        self.book.move(task, "candidate", version, "register", "registered")
        return self.resolve(task, version)

    def _same_version(
        self, task: str, manifests: dict[str, Manifest], base: BaseRecord, dataset_fingerprint: str
    ) -> VersionRecord | None:
        try:
            found = list(
                self.pages.versions(
                    f"name = '{task}' and tags.`{MANIFEST['adapter']}` = '{manifests['adapter'].digest}'"
                )
            )
        except MlflowException:
            return None
        aliases = self.book.aliases(task) if found else {}
        merged = manifests["merged"].digest if "merged" in manifests else None
        for version in found:
            record = version_record(version, aliases)
            if (record.base_fingerprint, record.dataset_fingerprint) == (
                base.fingerprint,
                dataset_fingerprint,
            ) and record.manifests.get("merged") == merged:
                return record
        return None

    def resolve(self, task: str, ref: str | int | None = None) -> VersionRecord:
        """The version an alias points at (default production) or a version number, with its lineage."""
        check_task_name(task)
        ref = parse_ref(ref)
        try:
            if isinstance(ref, int):
                version = self.client.get_model_version(task, str(ref))
            else:
                version = self.client.get_model_version_by_alias(task, ref)
        except MlflowException as e:
            # A missing alias is INVALID_PARAMETER_VALUE in MLflow's SQL store, a missing version RESOURCE_DOES_NOT_EXIST.
            if e.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            what = f"version {ref}" if isinstance(ref, int) else f"version with alias {ref!r}"
            raise RegistryError(f"task {task!r} has no {what}; see `loraops adapters list --task {task}`") from None
        # One round trip: MLflow returns the version with the aliases that point at it.
        return version_record(version, {alias: int(version.version) for alias in version.aliases})

    def list_versions(
        self, task: str | None = None, base: str | None = None, alias: str | None = None, task_prefix: str = ""
    ) -> list[VersionRecord]:
        """Versions of one task or of every task, sorted by task and version; filters: `base` (base name or a
        fingerprint prefix of 8+ hex digits), `alias` (versions an alias points at), `task_prefix`.

        Requests grow with pages, not tasks: the tasks' aliases come with one search of registered models and
        the versions with one search of model versions, each paged to the end. The task, prefix and base filters
        run on the server; the alias filter runs here (MLflow's searches cannot filter by alias)."""
        if alias is not None and alias not in ALIASES:
            raise RegistryError(f"alias {alias!r} is not one of {', '.join(ALIASES)}; filter by one of those")
        where = [f"name = '{check_task_name(task)}'"] if task else []
        if task_prefix and not task:
            where.append(f"name LIKE '{check_task_prefix(task_prefix)}%'")
        if base and FINGERPRINT_PREFIX.fullmatch(base):
            where.append(f"tags.`{TAG}base.fingerprint` LIKE '{base}%'")
        elif base and not base.startswith(BASE_PREFIX):  # a base's model name ("base.<slug>") is matched below
            where.append(f"tags.`{TAG}base.name` = '{check_filter_value(base, 'base')}'")
        states = {task: self.book.state(task)} if task else self.book.states(task_prefix)
        records = [
            version_record(v, states[v.name].aliases)
            for v in self.pages.versions(" and ".join(where))
            if v.name in states  # a task's versions (bases are registered models of their own)
        ]
        if base and base.startswith(BASE_PREFIX):
            records = [r for r in records if base_model_name(r.base_name) == base]
        if alias:
            records = [r for r in records if alias in r.aliases]
        return sorted(records, key=lambda r: (r.task, r.version))

    def lineage(self, task: str) -> Lineage:
        """base model(s) -> versions -> promotions for one task."""
        versions = self.list_versions(task)
        bases: dict[str, BaseRecord | BaseName] = {}
        for record in versions:
            if record.base_fingerprint not in bases:
                found = self.find_base(record.base_fingerprint)
                bases[record.base_fingerprint] = found or BaseName(name=record.base_name)
        return Lineage(task=task, bases=list(bases.values()), versions=versions, history=self.book.history(task))

    # ---- internals ---------------------------------------------------------------------------
    def _log_folder(self, run_id: str, folder: Path, manifest: Manifest, mode: str) -> None:
        self.runs.log_artifacts(run_id, folder, mode)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / MANIFEST_FILE).write_bytes(manifest.to_json())
            self.client.log_artifact(run_id, str(Path(tmp) / MANIFEST_FILE), mode)

    def _ensure_model(self, name: str, tags: dict[str, str]) -> None:
        try:
            self.client.create_registered_model(name, tags=tags)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
