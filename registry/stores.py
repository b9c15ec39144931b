"""Artifact stores with one interface: a local folder and S3-compatible object storage (boto3).

Keys are POSIX paths below the store's root/prefix. The S3 store is in s3_store.py; S3 clients, URIs and errors
come from s3.py.

`upload` reads a file once: that pass computes the sha256 the manifest promised (a mismatch stops
before anything becomes visible) and the S3 additional checksums (SHA-256 per part), which the
store checks on receipt and reports back on HEAD. `present` answers "already there?" from one
HEAD (S3) or a stat (folder, through the digest cache).
"""

import base64
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .digests import CHUNK, DigestCache, FileDigest
from .errors import IntegrityError, RegistryError, StoreError
from .manifest import FileEntry
from .s3 import is_s3_uri, parse_s3_uri

Progress = Callable[[int], None]
log = logging.getLogger("loraops.store")


def mismatch(source: Path, actual: str, expected: FileEntry) -> IntegrityError:
    return IntegrityError(
        f"{source}: sha256 {actual[:12]}... while reading it for upload, manifest says "
        f"{expected.sha256[:12]}...; the local copy changed, nothing was published from it"
    )


def b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class Store(Protocol):
    """What promotion and fetch need of a promotion target."""

    def uri(self, key: str = "") -> str: ...
    def check(self) -> None: ...
    def present(self, key: str, entry: FileEntry, digests: DigestCache, source: Path | None = None) -> bool: ...
    def upload(
        self,
        source: Path,
        key: str,
        entry: FileEntry,
        progress: Progress | None = None,
        digests: DigestCache | None = None,
    ) -> FileDigest | None: ...
    def can_copy_from(self, uri: str) -> bool: ...
    def copy_from(self, source_uri: str, key: str, entry: FileEntry) -> bool: ...
    def abort_stale(self, prefix: str) -> None: ...
    def download(self, key: str, dest: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...


class LocalStore:
    """A folder with the same layout as the bucket; writes land atomically (temp file + rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({self.root})"

    def uri(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"promotion target {self.root} cannot be created ({e.strerror}); pick a writable folder"
            ) from None

    def present(self, key: str, entry: FileEntry, digests: DigestCache, source: Path | None = None) -> bool:
        path = self.root / key
        return path.is_file() and path.stat().st_size == entry.bytes and digests.sha256(path) == entry.sha256

    def upload(
        self,
        source: Path,
        key: str,
        entry: FileEntry,
        progress: Progress | None = None,
        digests: DigestCache | None = None,
    ) -> None:
        """Copy to a temporary name beside the destination, hashing as it goes; fsync; rename into place."""
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".upload-", delete=False) as tmp:
            try:
                with open(source, "rb") as f:
                    while chunk := f.read(CHUNK):
                        digest.update(chunk)
                        tmp.write(chunk)
                        if progress:
                            progress(len(chunk))
                tmp.flush()
                os.fsync(tmp.fileno())
                if digest.hexdigest() != entry.sha256:
                    raise mismatch(source, digest.hexdigest(), entry)
            except BaseException:
                os.unlink(tmp.name)
                raise
        os.replace(tmp.name, dest)

    def can_copy_from(self, uri: str) -> bool:
        return False  # registered artifacts come through the verified local cache

    def copy_from(self, source_uri: str, key: str, entry: FileEntry) -> bool:
        return False

    def abort_stale(self, prefix: str) -> None:
        """Nothing to abort: an upload becomes visible only by its final rename."""

    def download(self, key: str, dest: Path) -> None:
        source = self.root / key
        if not source.is_file():
            raise StoreError(f"{source}: missing from the promotion target; promote the version again")
        shutil.copyfile(source, dest)

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".upload-{dest.name}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)

    def get_bytes(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None


def open_store(target: str | Path) -> Store:
    """'s3://bucket/prefix' -> S3Store; a path or file:// URI -> LocalStore."""
    target = str(target)
    if is_s3_uri(target):
        from .s3_store import S3Store

        return S3Store(*parse_s3_uri(target, "promotion target"))
    if "://" in target and not target.startswith("file://"):
        raise RegistryError(
            f"promotion target {target!r}: unsupported scheme; use s3://bucket/prefix or a local folder"
        )
    return LocalStore(target.removeprefix("file://"))
