"""AdapterRegistry: adapter versions per task on MLflow's model registry, with lineage to the base model.

One registered model per task (name = task slug); base models registered as `base.<slug>`,
one version per weight fingerprint. Aliases production / previous-production / candidate;
every alias move is appended to the task's history (registered-model tags, one per event).
"""

import json
import math
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from lora_core.peft_format import read_peft_config

from .aliases import AliasBook, Drift
from .code_version import code_version
from .digests import DigestCache
from .engines import Adapter, adapted_modules, check_servable
from .errors import BaseMismatchError, IntegrityError, RegistryError, UnknownTaskError
from .fingerprint import CONFIG_FILE, fingerprint_weights
from .locks import exclusive
from .manifest import MANIFEST_FILE, Manifest, scan_folder
from .mlflow_model import MODEL_DIR, write_model
from .names import base_model_name, check_task_name, parse_ref
from .records import MODES, BaseName, BaseRecord, HistoryEvent, Lineage, LoraSummary, Promotion, VersionRecord
from .runs import RunTracking
from .settings import RegistrySettings
from .stores import S3Store, open_store
from .transfer import download_promoted, materialize, seed, upload_verified

TAG = "loraops."
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
HEX64 = re.compile(r"[0-9a-f]{64}")
SPECTRUM = TAG + "spectrum."  # version tags from the low-rank analysis


class AdapterRegistry:
    schema_ready: set[str] = set()  # embedded databases this process has opened once under the lock

    def __init__(self, settings: RegistrySettings | None = None):
        self.settings = settings or RegistrySettings.from_env()
        self.client = MlflowClient(self.settings.tracking_uri, registry_uri=self.settings.tracking_uri)
        if self.settings.embedded and self.settings.tracking_uri not in self.schema_ready:
            # MLflow creates its SQLite schema on first use; two processes doing it at once collide (runs started
            # together on a fresh home), so the first use happens under a lock, once per process.
            with exclusive(self.settings.home / "locks", "mlflow-database"):
                self.client.search_experiments(max_results=1)
            self.schema_ready.add(self.settings.tracking_uri)
        self.digests = DigestCache(self.settings.digests)
        self.book = AliasBook(self.client, self.settings.actor)
        self.runs = RunTracking(self.client, self.settings)

    # ---- base models -------------------------------------------------------------------------
    def register_base(self, path: str | Path, name: str | None = None, source: str | None = None,
                      revision: str | None = None) -> BaseRecord:
        """Register a base model folder once per weight fingerprint; the same weights return the same record."""
        path = Path(path)
        fingerprint = fingerprint_weights(path, self.digests)
        config = json.loads((path / CONFIG_FILE).read_text()) if (path / CONFIG_FILE).exists() else {}
        name = name or config.get("_name_or_path") or path.name
        model = base_model_name(name)
        if found := self.find_base(fingerprint):
            return found
        self._ensure_model(model, {TAG + "kind": "base", TAG + "base.name": name})
        tags = {TAG + "kind": "base", TAG + "base.name": name, TAG + "base.fingerprint": fingerprint,
                TAG + "base.source": source or str(path.resolve())}
        if revision:
            tags[TAG + "base.revision"] = revision
        if config.get("model_type"):
            tags[TAG + "base.model_type"] = config["model_type"]
        run = self.client.create_run(self.runs.experiment("loraops-bases"), run_name=f"base {name}", tags=tags)
        if (path / CONFIG_FILE).exists():
            self.client.log_artifact(run.info.run_id, str(path / CONFIG_FILE), "base")
        self.client.set_terminated(run.info.run_id)
        version = self.client.create_model_version(model, f"{run.info.artifact_uri}/base", run_id=run.info.run_id,
                                                   tags=tags, await_creation_for=0)
        return self._base_record(version)

    def find_base(self, fingerprint: str) -> BaseRecord | None:
        found = self.client.search_model_versions(
            f"tags.`{TAG}kind` = 'base' and tags.`{TAG}base.fingerprint` = '{_quote(fingerprint)}'")
        return self._base_record(found[0]) if found else None

    def check_base(self, record: VersionRecord, base_path: str | Path) -> str:
        """Refuse to use `record` on a base whose weights differ from its training base; returns the fingerprint."""
        actual = fingerprint_weights(base_path, self.digests)
        if actual != record.base_fingerprint:
            raise BaseMismatchError(
                f"{record.task} v{record.version} was trained on {record.base_name} (fingerprint "
                f"{record.base_fingerprint[:12]}), but {base_path} has fingerprint {actual[:12]}; "
                f"load it on its own base or retrain the task on this one")
        return actual

    # ---- adapter versions --------------------------------------------------------------------
    def register(self, task: str, adapter_dir: str | Path, base: BaseRecord, dataset_fingerprint: str,
                 metrics: dict[str, float], merged_dir: str | Path | None = None, run_id: str | None = None,
                 description: str = "", input_example: list[str] | None = None,
                 spectrum: dict[str, float] | None = None) -> VersionRecord:
        """A new version of `task`, an MLflow Model (mlflow_model.py) whose weights and manifests are logged to the
        run; lineage in tags; alias `candidate`. `input_example`: texts the model's input example shows.
        `spectrum`: numbers from the low-rank analysis (rank_at_95, elbow, ...), one version tag each, so the UI
        sorts and filters by them."""
        check_task_name(task)
        lora, task_type = _read_adapter_config(Path(adapter_dir))
        if merged_dir is not None:
            _check_merged(Path(merged_dir))
        if not HEX64.fullmatch(dataset_fingerprint):
            raise RegistryError(f"dataset fingerprint {dataset_fingerprint!r} is not a sha256 hex digest; pass the digest of the data")
        bad = [k for k, v in metrics.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
        spectrum = spectrum or {}
        bad = [k for k, v in {**metrics, **spectrum}.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            value = {**metrics, **spectrum}[bad[0]]
            raise RegistryError(f"metric {bad[0]!r} = {value!r} is not a finite number; fix the evaluation")
        folders = {"adapter": Path(adapter_dir)} | ({"merged": Path(merged_dir)} if merged_dir else {})
        manifests = {mode: Manifest(task=task, mode=mode, base_fingerprint=base.fingerprint, files=scan_folder(folder, self.digests))
                     for mode, folder in folders.items()}
        if same := self._same_version(task, manifests, base, dataset_fingerprint):
            return same  # re-registering identical bytes on the same base and data adds nothing
        own_run = run_id is None
        if own_run:
            run_id = self.runs.start(task, f"register {task}", {})
            self.runs.log_metrics(run_id, metrics)
        with tempfile.TemporaryDirectory() as tmp:
            write_model(Path(tmp) / MODEL_DIR, task_type, base, input_example or ["an example text"])
            self.runs.log_artifacts(run_id, Path(tmp) / MODEL_DIR, MODEL_DIR)
        for mode, folder in folders.items():
            self._log_folder(run_id, folder, manifests[mode], f"{MODEL_DIR}/{mode}")
            seed(self.settings.cache, folder, manifests[mode])
        if own_run:
            self.runs.end(run_id)
        tags = {TAG + "base.name": base.name, TAG + "base.fingerprint": base.fingerprint,
                TAG + "base.version": str(base.version), TAG + "dataset.fingerprint": dataset_fingerprint,
                **lora_tags(lora), TAG + "code.version": code_version(),
                TAG + "metrics": json.dumps(metrics, sort_keys=True), TAG + "manifest.sha256": manifests["adapter"].digest}
        if "merged" in manifests:
            tags[TAG + "merged.manifest.sha256"] = manifests["merged"].digest
        tags |= {f"{SPECTRUM}{key}": f"{value:g}" for key, value in spectrum.items()}
        self._ensure_model(task, {TAG + "kind": "task"})
        artifact_uri = self.client.get_run(run_id).info.artifact_uri
        version = int(self.client.create_model_version(task, f"{artifact_uri}/{MODEL_DIR}", run_id=run_id, tags=tags,
                                                       description=description, await_creation_for=0).version)
        self.book.move(task, "candidate", version, "register", "registered")
        return self.resolve(task, version)

    def _same_version(self, task: str, manifests: dict[str, Manifest], base: BaseRecord,
                      dataset_fingerprint: str) -> VersionRecord | None:
        try:
            found = self.client.search_model_versions(
                f"name = '{task}' and tags.`{TAG}manifest.sha256` = '{manifests['adapter'].digest}'")
        except MlflowException:
            return None
        aliases = self.aliases(task) if found else {}
        for version in found:
            record = self._version_record(version, aliases)
            if (record.base_fingerprint, record.dataset_fingerprint) == (base.fingerprint, dataset_fingerprint) \
                    and record.manifests.get("merged") == (manifests["merged"].digest if "merged" in manifests else None):
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
        return self._version_record(version, {alias: int(version.version) for alias in version.aliases})

    def list_versions(self, task: str | None = None, base: str | None = None) -> list[VersionRecord]:
        """Versions of one task or of all tasks; `base` filters by base name or fingerprint (prefix)."""
        tasks = [check_task_name(task)] if task else sorted(
            m.name for m in self.client.search_registered_models(f"tags.`{TAG}kind` = 'task'"))
        records = []
        for name in tasks:
            aliases = self.aliases(name)
            versions = self.client.search_model_versions(f"name = '{name}'")
            records += sorted((self._version_record(v, aliases) for v in versions), key=lambda r: r.version)
        if base:
            records = [r for r in records if base in (r.base_name, base_model_name(r.base_name))
                       or (len(base) >= 8 and r.base_fingerprint.startswith(base))]
        return records

    def lineage(self, task: str) -> Lineage:
        """base model(s) -> versions -> promotions for one task."""
        versions = self.list_versions(task)
        bases: dict[str, BaseRecord | BaseName] = {}
        for record in versions:
            if record.base_fingerprint not in bases:
                found = self.find_base(record.base_fingerprint)
                bases[record.base_fingerprint] = found or BaseName(name=record.base_name)
        return Lineage(task=task, bases=list(bases.values()), versions=versions, history=self.history(task))

    # ---- promotion ---------------------------------------------------------------------------
    def promote(self, task: str, version: int | str, mode: str = "adapter", target: str | None = None,
                reason: str = "", progress: bool = True, serve_with: str = "any", drift: str | None = None) -> Promotion:
        """Upload + verify under <target>/<task>/v<version>/<mode>/, manifest last; only then move `production`.

        serve_with: an engine (engines.py) whose loading rules an adapter must meet; checked before any upload.
        drift: how to settle aliases moved outside loraops (aliases.py): None refuses, "accept" or "revert"."""
        check_task_name(task)
        if mode not in MODES:
            raise RegistryError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        record = self.resolve(task, version)
        if mode not in record.manifests:
            raise RegistryError(f"{task} v{record.version} has no merged model; register it with a merged folder "
                                f"or promote --mode adapter")
        settled = self.book.settle(task, drift, "promote")  # before any work: drift refuses, or is settled as told
        store = open_store(target or self.settings.promotion_target)
        store.check()
        # Artifacts already in S3 (an MLflow server writing straight to the bucket) are copied server-side:
        # no byte passes through this machine. Anything else comes from the verified local cache.
        remote = record.artifacts[mode] if isinstance(store, S3Store) and record.artifacts[mode].startswith("s3://") else None
        source = None if remote else self._fetch_from_mlflow(record, mode)
        if mode == "adapter" and serve_with != "any":  # a merged model is served as a model of its own
            self.check_servable(record, serve_with, source or self._fetch_from_mlflow(record, mode))
        manifest = self._manifest(record, mode, source)
        prefix = f"{task}/v{record.version}/{mode}"
        # One promotion of a prefix at a time on this machine: the next one may then abort what a killed one left.
        with exclusive(self.settings.home / "locks", store.uri(prefix)):
            uploaded, skipped, sent = upload_verified(store, prefix, manifest, self.digests, progress, source,
                                                      copy_from=remote, fetch=lambda: self._fetch_from_mlflow(record, mode))
        self.client.set_model_version_tag(task, str(record.version), f"{TAG}promoted.{mode}", store.uri(prefix))
        with self._alias_lock(task):
            current = self.aliases(task).get("production")
            events = settled
            if current != record.version:
                if current is not None:
                    events.append(self.book.move(task, "previous-production", current, "promote", reason, mode))
                events.append(self.book.move(task, "production", record.version, "promote", reason, mode))
        return Promotion(task=task, version=record.version, mode=mode, uri=store.uri(prefix), uploaded=uploaded,
                         skipped=skipped, bytes_uploaded=sent, previous=current, events=events)

    def check_servable(self, record: VersionRecord, engine: str, folder: Path) -> None:
        """Refuse (NotServableError) an adapter that `engine` would not load next to its base."""
        base = self.find_base(record.base_fingerprint)
        adapter = Adapter(read_peft_config(folder), adapted_modules(folder), base.model_type if base else None,
                          record.base_name)
        check_servable(engine, adapter, f"{record.task} v{record.version}")

    def rollback(self, task: str, reason: str = "", drift: str | None = None) -> list[HistoryEvent]:
        """production <- previous-production; previous-production <- the version before that, if any.
        Returns the production and previous-production moves (after any settled drift)."""
        with self._alias_lock(task):
            self.book.settle(task, drift, "rollback")
            back_to = self.aliases(task).get("previous-production")
            if back_to is None:
                raise RegistryError(f"task {task!r} has no previous production version; nothing to roll back to")
            # The version that was production before `back_to` was promoted to it (rollbacks do not count,
            # or two rollbacks in a row would swap back and forth).
            before = next((e.from_version for e in reversed(self.history(task))
                           if e.action == "promote" and e.alias == "production" and e.to_version == back_to), None)
            events = [self.book.move(task, "production", back_to, "rollback", reason)]
            events.append(self.book.move(task, "previous-production", before, "rollback", reason))
            return events

    def _alias_lock(self, task: str):
        """Alias moves of one task, one promotion or rollback at a time on this machine: read, then move."""
        return exclusive(self.settings.home / "locks", f"aliases:{self.settings.tracking_uri}:{task}")

    def fetch(self, task: str, ref: str | int | None = None, mode: str = "adapter") -> Path:
        """A verified local copy in the content-addressed cache: from the promoted copy if any, else MLflow."""
        record = self.resolve(task, ref)
        if mode not in record.manifests:
            raise RegistryError(f"{task} v{record.version} has no {mode} artifacts; use --mode adapter")
        if mode not in record.promoted:
            return self._fetch_from_mlflow(record, mode)
        store = open_store(record.promoted[mode])
        return materialize(record.manifests[mode], self.settings.cache, download_promoted(store, record.manifests[mode]),
                           store.uri(), self.digests)

    # ---- internals ---------------------------------------------------------------------------
    def _fetch_from_mlflow(self, record: VersionRecord, mode: str) -> Path:
        def download(tmp: Path) -> None:
            for path in Path(self._download(record.artifacts[mode], tmp)).iterdir():
                path.rename(tmp / path.name)
        return materialize(record.manifests[mode], self.settings.cache, download, record.artifacts[mode], self.digests)

    def _manifest(self, record: VersionRecord, mode: str, source: Path | None) -> Manifest:
        """The version's manifest (from the fetched folder, else manifest.json alone from MLflow), checked against
        the registry's digest before any file name in it is used."""
        if source is None:
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(self._download(f"{record.artifacts[mode]}/{MANIFEST_FILE}", Path(tmp))).read_bytes()
        else:
            data = (source / MANIFEST_FILE).read_bytes()
        manifest = Manifest.from_json(data, record.artifacts[mode])
        if manifest.digest != record.manifests[mode]:
            raise IntegrityError(f"{record.artifacts[mode]}: manifest digest {manifest.digest[:12]}... is not the "
                                 f"registered {record.manifests[mode][:12]}...; the artifacts were altered")
        return manifest.model_copy(update={"version": record.version})

    def _download(self, uri: str, folder: Path) -> str:
        """The artifact (file or folder) at `uri` into `folder`; returns the local path."""
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder),
                                                   tracking_uri=self.settings.tracking_uri)

    def _log_folder(self, run_id: str, folder: Path, manifest: Manifest, mode: str) -> None:
        self.client.log_artifacts(run_id, str(folder), mode)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / MANIFEST_FILE).write_bytes(manifest.to_json())
            self.client.log_artifact(run_id, str(Path(tmp) / MANIFEST_FILE), mode)

    def aliases(self, task: str) -> dict[str, int]:
        return self.book.aliases(task)

    def history(self, task: str) -> list[HistoryEvent]:
        """Every alias move of `task`, oldest first."""
        return self.book.history(task)

    def drift(self, task: str) -> list[Drift]:
        """The aliases of `task` moved outside loraops (aliases.py): where the registry and the history disagree."""
        return self.book.drift(task)

    def check_drift(self, task: str) -> None:
        """Raise DriftError when an alias of `task` was moved outside loraops; a task with no versions has none."""
        try:
            self.book.settle(task, None, "promote")
        except UnknownTaskError:
            pass

    def _ensure_model(self, name: str, tags: dict[str, str]) -> None:
        try:
            self.client.create_registered_model(name, tags=tags)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise

    def experiment(self, name: str) -> str:
        """The id of experiment `name`, created (with artifacts under $LORAOPS_HOME when embedded) if missing."""
        return self.runs.experiment(name)

    def _base_record(self, version) -> BaseRecord:
        tags = version.tags
        return BaseRecord(name=tags[TAG + "base.name"], model=version.name, version=int(version.version),
                          fingerprint=tags[TAG + "base.fingerprint"], source=tags.get(TAG + "base.source", ""),
                          revision=tags.get(TAG + "base.revision"), model_type=tags.get(TAG + "base.model_type"))

    def _version_record(self, version, aliases: dict[str, int]) -> VersionRecord:
        tags, number = version.tags, int(version.version)
        manifests = {"adapter": tags[TAG + "manifest.sha256"]}
        if TAG + "merged.manifest.sha256" in tags:
            manifests["merged"] = tags[TAG + "merged.manifest.sha256"]
        artifact_root = version.source.removesuffix("/adapter")  # versions registered before MLflow Models: the run root
        return VersionRecord(
            task=version.name, version=number, aliases=sorted(a for a, v in aliases.items() if v == number),
            base_name=tags[TAG + "base.name"], base_fingerprint=tags[TAG + "base.fingerprint"],
            base_version=int(tags[TAG + "base.version"]) if TAG + "base.version" in tags else None,
            dataset_fingerprint=tags[TAG + "dataset.fingerprint"],
            lora=lora_from_tags(tags),
            metrics=json.loads(tags.get(TAG + "metrics", "{}")), code_version=tags.get(TAG + "code.version", ""),
            run_id=version.run_id,
            created=datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc).isoformat(timespec="seconds"),
            artifacts={mode: f"{artifact_root}/{mode}" for mode in manifests},
            manifests=manifests,
            promoted={mode: tags[f"{TAG}promoted.{mode}"] for mode in MODES if f"{TAG}promoted.{mode}" in tags},
            spectrum={k.removeprefix(SPECTRUM): float(v) for k, v in tags.items() if k.startswith(SPECTRUM)})


def _quote(value: str) -> str:
    return value.replace("'", "")


def lora_tags(lora: LoraSummary) -> dict[str, str]:
    return {TAG + "lora.r": str(lora.r), TAG + "lora.alpha": str(lora.alpha),
            TAG + "lora.targets": json.dumps(lora.targets)}


def lora_from_tags(tags: dict[str, str]) -> LoraSummary:
    return LoraSummary(r=int(tags[TAG + "lora.r"]), alpha=float(tags[TAG + "lora.alpha"]),
                       targets=json.loads(tags[TAG + "lora.targets"]))


def _read_adapter_config(folder: Path) -> tuple[LoraSummary, str | None]:
    """The adapter's LoRA settings and its task_type (which MLflow Model it becomes)."""
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise RegistryError(f"{folder}: missing {', '.join(missing)}; pass a folder written by save_adapter (PEFT format)")
    try:
        config = json.loads((folder / ADAPTER_FILES[0]).read_text())
        if config.get("peft_type") != "LORA":
            raise ValueError(f"peft_type is {config.get('peft_type')!r}")
        lora = LoraSummary(r=config["r"], alpha=config["lora_alpha"], targets=config["target_modules"])
        return lora, config.get("task_type")
    except (ValueError, KeyError, TypeError) as e:
        raise RegistryError(f"{folder / ADAPTER_FILES[0]}: not a LoRA adapter config ({e}); re-save it with save_adapter") from None


def _check_merged(folder: Path) -> None:
    if not (folder / CONFIG_FILE).is_file() or not any(folder.glob("*.safetensors")):
        raise RegistryError(f"{folder}: a merged model needs config.json and *.safetensors; save it with "
                            f"save_pretrained(..., safe_serialization=True)")
