"""Moving verified folders: upload to a store (manifest last) and fetch into the content-addressed cache."""

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from lora_core.scratch import scratch_dir

from .digests import DigestCache, FileDigest
from .errors import IntegrityError
from .manifest import MANIFEST_FILE, Manifest, verify_folder
from .stores import FILES_AT_ONCE, Known, Store


class Source(Protocol):
    """Where the files of an upload come from: a location a store may copy from server-side, and a local copy."""

    @property
    def uri(self) -> str: ...

    def local(self) -> Path | None:
        """The local copy if it is here already (nothing is fetched)."""
        ...

    def folder(self) -> Path:
        """A verified local copy, fetched on first use."""
        ...


class Download(Protocol):
    """What `materialize` fills an empty folder from: the files and their manifest.json."""

    @property
    def where(self) -> str: ...

    def into(self, folder: Path) -> None: ...


def upload_verified(
    store: Store, prefix: str, manifest: Manifest, digests: DigestCache, source: Source, progress: bool = True
) -> tuple[list[str], list[str], int]:
    """Publish the manifest's files under `prefix`, each verified by the store; manifest.json last.

    Files the store can copy from `source.uri` server-side are copied; the others are read once from the
    source's local copy (fetched only if some file needs it). Objects already there (one HEAD, or a stat for
    a folder) are not sent again, so a repeated promotion moves no bytes. Incomplete multipart uploads a
    killed promotion left under the prefix are aborted first (the caller holds the prefix's lock, so none of
    them is in flight here). Returns (uploaded or copied, skipped, bytes sent from this machine). The caller
    has run store.check(), so a missing bucket or bad credentials fail before any work.
    """
    store.abort_stale(prefix + "/")
    local = source.local()
    todo = [
        name
        for name, entry in manifest.files.items()
        if not store.present(f"{prefix}/{name}", entry, digests, local / name if local else None)
    ]
    copyable = store.can_copy_from(source.uri)
    copied = [n for n in todo if copyable and store.copy_from(f"{source.uri}/{n}", f"{prefix}/{n}", manifest.files[n])]
    send = [name for name in todo if name not in copied]
    total = sum(manifest.files[name].bytes for name in send)
    if send:
        folder = source.folder()
        known = {name: recorded(digests, folder / name) for name in send}  # here: the cache's SQLite is this thread's

        def send_one(name: str) -> FileDigest | None:
            return store.upload(folder / name, f"{prefix}/{name}", manifest.files[name], bar.update, known[name])

        # Files go up side by side (a store bounds the bytes in flight), so one file's last part, completion and
        # HEAD overlap the next file's parts. A bar on a terminal only (disable=None), and only when asked.
        with (
            tqdm(
                total=total, unit="B", unit_scale=True, desc=f"upload {prefix}", disable=None if progress else True
            ) as bar,
            ThreadPoolExecutor(min(len(send), FILES_AT_ONCE), thread_name_prefix="loraops-file") as files,
        ):
            sent = list(files.map(send_one, send))
        for name, digest in zip(send, sent):
            if digest is not None:  # the part digests of this pass answer the next "already there?"
                digests.put(folder / name, digest)
    data = manifest.to_json()
    store.put_bytes(f"{prefix}/{MANIFEST_FILE}", data)
    if store.get_bytes(f"{prefix}/{MANIFEST_FILE}") != data:
        raise IntegrityError(f"{store.uri(f'{prefix}/{MANIFEST_FILE}')}: read back differently; promotion stopped")
    return todo, [name for name in manifest.files if name not in todo], total


def recorded(digests: DigestCache, path: Path) -> Known | None:
    """What the digest cache knows of `path`: trusted digests, else ones to confirm while the file is read."""
    found = digests.recorded(path)
    return Known(found, digests.cached(path) is not None) if found and found.sha256 else None


class PromotedCopy:
    """A promoted folder in a store, as a Download for `materialize` (manifest first, checked before it is used)."""

    def __init__(self, store: Store, digest: str):
        self.store, self.digest, self.where = store, digest, store.uri()

    def into(self, folder: Path) -> None:
        data = self.store.get_bytes(MANIFEST_FILE)
        if data is None:
            raise IntegrityError(f"{self.store.uri(MANIFEST_FILE)} is missing; promote the version again")
        manifest = Manifest.from_json(data, self.store.uri(MANIFEST_FILE))
        if manifest.digest != self.digest:  # checked before any file name from it is used
            raise IntegrityError(
                f"{self.store.uri(MANIFEST_FILE)}: digest {manifest.digest[:12]}... is not the "
                f"registered {self.digest[:12]}...; promote the version again"
            )
        (folder / MANIFEST_FILE).write_bytes(data)
        for name in manifest.files:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            self.store.download(name, folder / name)


def seed(cache: Path, folder: Path, manifest: Manifest) -> None:
    """Put a folder just registered into the cache as hard links (no copy, no download at promotion time).

    Best effort: where links are impossible (another filesystem) promotion fetches from MLflow instead.
    """
    dest = cache / manifest.digest
    if dest.is_dir():
        return
    tmp = scratch_dir(cache, ".seed-")
    try:
        for name in manifest.files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            os.link(folder / name, tmp / name)
        (tmp / MANIFEST_FILE).write_bytes(manifest.to_json())
        tmp.rename(dest)
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def materialize(digest: str, cache: Path, download: Download, digests: DigestCache | None = None) -> Path:
    """The folder whose manifest has content digest `digest`, in the cache at cache/<digest>, verified.

    `download` fills a temporary folder (files + manifest.json); it is checked against the digest the
    registry recorded before it is moved into place, so the cache never holds bad bytes.
    """
    where = download.where
    dest = cache / digest
    if dest.is_dir():
        try:
            verify_folder(dest, _manifest(dest, digest, where).files, digests)
            return dest
        except IntegrityError:
            shutil.rmtree(dest)  # tampered or half-written: fetch it again
    tmp = scratch_dir(cache, ".fetch-")
    try:
        download.into(tmp)
        verify_folder(tmp, _manifest(tmp, digest, where).files, digests)
        try:
            tmp.rename(dest)
        except OSError:
            if not dest.is_dir():
                raise  # else a concurrent fetch won the race with the same verified bytes
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _manifest(folder: Path, digest: str, where: str) -> Manifest:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise IntegrityError(f"{where}: no {MANIFEST_FILE}; the folder is incomplete, promote the version again")
    manifest = Manifest.from_json(path.read_bytes(), where)
    if manifest.digest != digest:
        raise IntegrityError(
            f"{where}: manifest digest {manifest.digest[:12]}... differs from the registry's "
            f"{digest[:12]}...; the copy is not the registered version"
        )
    return manifest
