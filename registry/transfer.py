"""Moving verified folders: upload to a store (manifest last) and fetch into the content-addressed cache."""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from lora_core.scratch import scratch_dir

from .errors import IntegrityError
from .digests import DigestCache
from .manifest import MANIFEST_FILE, Manifest, verify_folder
from .stores import LocalStore, S3Store


def upload_verified(store: LocalStore | S3Store, prefix: str, manifest: Manifest, digests: DigestCache,
                    progress: bool = True, folder: Path | None = None, copy_from: str | None = None,
                    fetch: Callable[[], Path] | None = None) -> tuple[list[str], list[str], int]:
    """Publish the manifest's files under `prefix`, each verified by the store; manifest.json last.

    Files come from `folder`, each read once; or, with `copy_from` (the artifacts' s3:// folder on the
    same store), by server-side copy, fetching the folder (`fetch`) only for what cannot be copied.
    Objects already there (one HEAD, or a stat for a folder) are not sent again, so a repeated
    promotion moves no bytes. Incomplete multipart uploads a killed promotion left under the prefix
    are aborted first (the caller holds the prefix's lock, so none of them is in flight here). Returns (uploaded or copied, skipped, bytes sent from this machine). The caller has run
    store.check(), so a missing bucket or bad credentials fail before any work.
    """
    if isinstance(store, S3Store):
        store.abort_stale(prefix + "/")
    todo = [name for name, entry in manifest.files.items()
            if not store.present(f"{prefix}/{name}", entry, digests, folder / name if folder else None)]
    if copy_from:
        copied = [n for n in todo if store.copy_from(f"{copy_from}/{n}", f"{prefix}/{n}", manifest.files[n])]
    else:
        copied = []
    send = [name for name in todo if name not in copied]
    if send and folder is None:
        folder = fetch()
    total = sum(manifest.files[name].bytes for name in send)
    # A bar on a terminal only (disable=None), and only when asked and there is something to send.
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"upload {prefix}", disable=None if progress and send else True) as bar:
        for name in send:
            sent = store.upload(folder / name, f"{prefix}/{name}", manifest.files[name], bar.update, digests)
            if sent is not None:  # the part digests of this pass answer the next "already there?"
                digests.put(folder / name, sent)
    data = manifest.to_json()
    store.put_bytes(f"{prefix}/{MANIFEST_FILE}", data)
    if store.get_bytes(f"{prefix}/{MANIFEST_FILE}") != data:
        raise IntegrityError(f"{store.uri(f'{prefix}/{MANIFEST_FILE}')}: read back differently; promotion stopped")
    return todo, [name for name in manifest.files if name not in todo], total


def download_promoted(store: LocalStore | S3Store, digest: str) -> Callable[[Path], None]:
    """A `download` for `materialize` that copies a promoted folder (manifest first) out of `store`."""
    def download(tmp: Path) -> None:
        data = store.get_bytes(MANIFEST_FILE)
        if data is None:
            raise IntegrityError(f"{store.uri(MANIFEST_FILE)} is missing; promote the version again")
        manifest = Manifest.from_json(data, store.uri(MANIFEST_FILE))
        if manifest.digest != digest:  # checked before any file name from it is used
            raise IntegrityError(f"{store.uri(MANIFEST_FILE)}: digest {manifest.digest[:12]}... is not the registered "
                                 f"{digest[:12]}...; promote the version again")
        (tmp / MANIFEST_FILE).write_bytes(data)
        for name in manifest.files:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            store.download(name, tmp / name)
    return download


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


def materialize(digest: str, cache: Path, download: Callable[[Path], None], where: str,
                digests: DigestCache | None = None) -> Path:
    """The folder whose manifest has content digest `digest`, in the cache at cache/<digest>, verified.

    download(tmp) fills a temporary folder (files + manifest.json); it is checked against the
    digest the registry recorded before it is moved into place, so the cache never holds bad bytes.
    """
    dest = cache / digest
    if dest.is_dir():
        try:
            verify_folder(dest, _manifest(dest, digest, where).files, digests)
            return dest
        except IntegrityError:
            shutil.rmtree(dest)  # tampered or half-written: fetch it again
    tmp = scratch_dir(cache, ".fetch-")
    try:
        download(tmp)
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
        raise IntegrityError(f"{where}: manifest digest {manifest.digest[:12]}... differs from the registry's "
                             f"{digest[:12]}...; the copy is not the registered version")
    return manifest
