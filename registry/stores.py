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
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, Protocol

from .digests import CHUNK, DigestCache, FileDigest
from .errors import IntegrityError, RegistryError, StoreError
from .free_space import SpaceNeed, check_space, disk_writes
from .manifest import FileEntry
from .s3 import is_s3_uri, parse_s3_uri

Progress = Callable[[int], None]
log = logging.getLogger("loraops.store")
TRANSFER_JOBS = 8  # objects or parts in flight by default: enough to fill a link to S3, few enough for a laptop
FILES_AT_ONCE = 8  # files of one folder uploading side by side (transfer.py); their parts share the slots


class TransferSlots:
    """At most `jobs` transfers (an object's PUT or copy, one part of a multipart upload) in flight across every
    store that shares it, and `jobs` threads that send parts: one bound for a whole fleet promotion.

    A slot is taken before a part is read, so at most `jobs` parts are in memory however many uploads share it.
    """

    def __init__(self, jobs: int = TRANSFER_JOBS):
        if jobs < 1:
            raise RegistryError(f"jobs = {jobs}: at least one transfer must be allowed; pass a positive number")
        self.jobs = jobs
        self.free = threading.BoundedSemaphore(jobs)
        self.pool = ThreadPoolExecutor(jobs, thread_name_prefix="loraops-transfer")

    def __enter__(self) -> "TransferSlots":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.pool.shutdown(wait=True)


def mismatch(source: Path, actual: str, expected: FileEntry) -> IntegrityError:
    return IntegrityError(
        f"{source}: sha256 {actual[:12]}... while reading it for upload, manifest says "
        f"{expected.sha256[:12]}...; the local copy changed, nothing was published from it"
    )


def b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class Known(NamedTuple):
    """A file's digests as the digest cache recorded them, read in the thread that owns the cache."""

    digest: FileDigest
    trusted: bool  # hashed well after the file last changed (DigestCache.cached); else to be confirmed while read


class Store(Protocol):
    """What promotion and fetch need of a promotion target."""

    def uri(self, key: str = "") -> str: ...
    def check(self) -> None: ...
    def present(self, key: str, entry: FileEntry, digests: DigestCache, source: Path | None = None) -> bool: ...
    def upload(
        self, source: Path, key: str, entry: FileEntry, progress: Progress | None = None, known: Known | None = None
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
        self, source: Path, key: str, entry: FileEntry, progress: Progress | None = None, known: Known | None = None
    ) -> None:
        """Copy to a temporary name beside the destination, hashing as it goes; fsync; rename into place. The free
        space is checked first; a disk that fills up anyway is DiskFull, the temporary file removed."""
        dest = self.root / key
        check_space([SpaceNeed(dest.parent, entry.bytes, key)])
        with disk_writes(self.root, key):
            self._copy(source, dest, entry, progress)

    def _copy(self, source: Path, dest: Path, entry: FileEntry, progress: Progress | None) -> None:
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
        tmp = dest.with_name(f".upload-{dest.name}")
        with disk_writes(self.root, key):
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, dest)

    def get_bytes(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None


def open_store(target: str | Path, slots: TransferSlots | None = None) -> Store:
    """'s3://bucket/prefix' -> S3Store; a path or file:// URI -> LocalStore. `slots`: a transfer bound shared with
    other stores (an S3 store makes its own otherwise; a folder needs none: a copy there is one local write)."""
    target = str(target)
    if is_s3_uri(target):
        from .s3_store import S3Store

        return S3Store(*parse_s3_uri(target, "promotion target"), slots=slots)
    if "://" in target and not target.startswith("file://"):
        raise RegistryError(
            f"promotion target {target!r}: unsupported scheme; use s3://bucket/prefix or a local folder"
        )
    return LocalStore(target.removeprefix("file://"))
