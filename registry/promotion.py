"""Promotion, rollback and fetch of adapter versions, and the serving rules checked before promotion.

Promotion uploads a version's folder to the target (S3 or a folder) with every file verified by the store, the
manifest last; only then does `production` move. Fetch gives a verified local copy from the content-addressed cache.
"""

import tempfile
from contextlib import AbstractContextManager
from pathlib import Path

import mlflow.artifacts
from mlflow import MlflowClient

from lora_core.peft_format import PeftConfig, read_peft_config

from .aliases import AliasBook
from .digests import DigestCache
from .engines import AdapterTraits, adapted_modules, check_engine_rules
from .errors import IntegrityError, RegistryError
from .locks import exclusive
from .manifest import MANIFEST_FILE, Manifest
from .names import check_task_name
from .records import MODES, HistoryEvent, Promotion, VersionRecord
from .settings import RegistrySettings
from .stores import TransferSlots, open_store
from .tags import promoted_tag
from .transfer import PromotedCopy, materialize, upload_verified
from .versions import VersionCatalog


class RegisteredArtifacts:
    """One mode's folder of a version as MLflow holds it (a transfer Source); fetched into the cache on first use."""

    def __init__(self, record: VersionRecord, mode: str, settings: RegistrySettings, digests: DigestCache):
        self.record, self.mode, self.settings, self.digests = record, mode, settings, digests
        self.uri = self.where = record.artifacts[mode]
        self.fetched: Path | None = None

    def local(self) -> Path | None:
        return self.fetched

    def folder(self) -> Path:
        if self.fetched is None:
            self.fetched = materialize(self.record.manifests[self.mode], self.settings.cache, self, self.digests)
        return self.fetched

    def into(self, folder: Path) -> None:
        for path in self._download(self.uri, folder).iterdir():
            path.rename(folder / path.name)

    def manifest(self) -> Manifest:
        """The manifest (from the local copy, else manifest.json alone from MLflow), checked against the registry's
        digest before any file name in it is used."""
        if self.fetched is None:
            with tempfile.TemporaryDirectory() as tmp:
                data = self._download(f"{self.uri}/{MANIFEST_FILE}", Path(tmp)).read_bytes()
        else:
            data = (self.fetched / MANIFEST_FILE).read_bytes()
        manifest = Manifest.from_json(data, self.uri)
        expected = self.record.manifests[self.mode]
        if manifest.digest != expected:
            raise IntegrityError(
                f"{self.uri}: manifest digest {manifest.digest[:12]}... is not the "
                f"registered {expected[:12]}...; the artifacts were altered"
            )
        return manifest.model_copy(update={"version": self.record.version})

    def _download(self, uri: str, folder: Path) -> Path:
        """The artifact (file or folder) at `uri` into `folder`; returns the local path."""
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(folder), tracking_uri=self.settings.tracking_uri
            )
        )


class Promotions:
    """Moves a registry's versions into production and back, and fetches them."""

    def __init__(
        self,
        catalog: VersionCatalog,
        client: MlflowClient,
        book: AliasBook,
        settings: RegistrySettings,
        digests: DigestCache,
    ):
        self.catalog, self.client, self.book, self.settings, self.digests = catalog, client, book, settings, digests

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
        slots: TransferSlots | None = None,
    ) -> Promotion:
        """See AdapterRegistry.promote; `slots`: a transfer bound shared with other promotions (fleet.py)."""
        check_task_name(task)
        if mode not in MODES:
            raise RegistryError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        record = self.catalog.resolve(task, version)
        if mode not in record.manifests:
            raise RegistryError(
                f"{task} v{record.version} has no merged model; register it with a merged folder "
                f"or promote --mode adapter"
            )
        settled = self.book.settle(task, drift, "promote")  # before any work: drift refuses, or is settled as told
        store = open_store(target or self.settings.promotion_target, slots)
        store.check()
        source = RegisteredArtifacts(record, mode, self.settings, self.digests)
        # Artifacts the store can copy server-side (an MLflow server writing straight to the bucket) pass through
        # no byte of this machine. Anything else comes from the verified local cache.
        if not store.can_copy_from(source.uri):
            source.folder()
        if mode == "adapter" and serve_with != "any":  # a merged model is served as a model of its own
            self.check_servable(record, serve_with, source.folder())
        manifest = source.manifest()
        prefix = f"{task}/v{record.version}/{mode}"
        # One promotion of a prefix at a time on this machine: the next one may then abort what a killed one left.
        with exclusive(self.settings.home / "locks", store.uri(prefix)):
            uploaded, skipped, sent = upload_verified(store, prefix, manifest, self.digests, source, progress)
        self.client.set_model_version_tag(task, str(record.version), promoted_tag(mode), store.uri(prefix))
        with self._alias_lock(task):
            current = self.book.aliases(task).get("production")
            events = settled
            if current != record.version:
                if current is not None:
                    events.append(self.book.move(task, "previous-production", current, "promote", reason, mode))
                events.append(self.book.move(task, "production", record.version, "promote", reason, mode))
        return Promotion(
            task=task,
            version=record.version,
            mode=mode,
            uri=store.uri(prefix),
            uploaded=uploaded,
            skipped=skipped,
            bytes_uploaded=sent,
            previous=current,
            events=events,
        )

    def check_servable(
        self, record: VersionRecord, engine: str, folder: Path, config: PeftConfig | None = None
    ) -> None:
        """Refuse (NotServableError) an adapter that `engine` would not load next to its base; `config`: the
        folder's adapter_config.json when the caller has read it already."""
        base = self.catalog.find_base(record.base_fingerprint)
        traits = AdapterTraits(
            config or read_peft_config(folder),
            adapted_modules(folder),
            base.model_type if base else None,
            record.base_name,
        )
        check_engine_rules(engine, traits, f"{record.task} v{record.version}")

    def rollback(self, task: str, reason: str = "", drift: str | None = None) -> list[HistoryEvent]:
        """See AdapterRegistry.rollback."""
        with self._alias_lock(task):
            self.book.settle(task, drift, "rollback")
            aliases, history = self.book.state(task)
            back_to = aliases.get("previous-production")
            if back_to is None:
                raise RegistryError(f"task {task!r} has no previous production version; nothing to roll back to")
            # The version that was production before `back_to` was promoted to it (rollbacks do not count,
            # or two rollbacks in a row would swap back and forth).
            before = next(
                (
                    e.from_version
                    for e in reversed(history)
                    if e.action == "promote" and e.alias == "production" and e.to_version == back_to
                ),
                None,
            )
            events = [self.book.move(task, "production", back_to, "rollback", reason)]
            events.append(self.book.move(task, "previous-production", before, "rollback", reason))
            return events

    def _alias_lock(self, task: str) -> AbstractContextManager[None]:
        """Alias moves of one task, one promotion or rollback at a time on this machine: read, then move."""
        return exclusive(self.settings.home / "locks", f"aliases:{self.settings.tracking_uri}:{task}")

    def fetch(self, task: str, ref: str | int | None = None, mode: str = "adapter") -> Path:
        """See AdapterRegistry.fetch."""
        record = self.catalog.resolve(task, ref)
        if mode not in record.manifests:
            raise RegistryError(f"{task} v{record.version} has no {mode} artifacts; use --mode adapter")
        if mode not in record.promoted:
            return RegisteredArtifacts(record, mode, self.settings, self.digests).folder()
        copy = PromotedCopy(open_store(record.promoted[mode]), record.manifests[mode])
        return materialize(record.manifests[mode], self.settings.cache, copy, self.digests)
