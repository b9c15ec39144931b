"""File digests computed in one read and remembered: sha256, S3 part digests and per-tensor digests.

A file is read once, front to back, feeding three hashes at once: the whole file (manifests), each
upload part (S3 additional checksums) and, for safetensors, each tensor (weight fingerprints).
The result is cached by the file's identity (device, inode, size, mtime_ns): an unchanged file
costs a stat, a changed one is read again. As in git's index, an entry hashed less than
RACY_NS after the file's mtime is not trusted (a same-size rewrite within the filesystem's
timestamp granularity would keep the mtime), so a fresh file is simply read again.
"""

import base64
import hashlib
import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from lora_core.safetensors_io import read_header

CHUNK = 8 * 1024 * 1024
MIN_PART = 16 * 1024 * 1024
MAX_PARTS = 10_000  # S3's limit on parts per upload
RACY_NS = 2_000_000_000


def part_size(nbytes: int) -> int:
    """Upload part size for a file of `nbytes`: 16 MiB, larger in whole MiB when 10,000 parts would not hold it."""
    return max(MIN_PART, math.ceil(nbytes / MAX_PARTS / 2**20) * 2**20)


@dataclass(frozen=True)
class FileDigest:
    sha256: str | None  # None when only the tensors were hashed (a base's fingerprint needs no more)
    bytes: int
    parts: tuple[str, ...]  # sha256 hex of each part_size(bytes) slice (empty with sha256 None)
    tensors: dict[str, list] | None = None  # tensor name -> [dtype, shape, sha256 hex of its bytes] (safetensors)

    def s3_checksum(self) -> str:
        """What S3 reports as ChecksumSHA256: the file's digest for one PUT, else the digest of the part digests + '-N'."""
        if len(self.parts) <= 1:
            if self.sha256 is None:
                raise ValueError("a digest of the tensors only has no S3 checksum; hash the whole file")
            return base64.b64encode(bytes.fromhex(self.sha256)).decode()
        joined = b"".join(bytes.fromhex(p) for p in self.parts)
        return f"{base64.b64encode(hashlib.sha256(joined).digest()).decode()}-{len(self.parts)}"


Identity = tuple[int, int, int, int]  # device, inode, size, mtime_ns


def identity(path: Path) -> Identity:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def digest_file(path: Path, tensors: bool = False, whole_file: bool = True) -> FileDigest:
    """One sequential read of `path`: whole-file and per-part sha256 (unless whole_file=False) and, with tensors=True
    (a safetensors file), per-tensor sha256."""
    size = path.stat().st_size
    step = part_size(size)
    whole, part, parts = hashlib.sha256(), hashlib.sha256(), []
    hash_file = whole.update if whole_file else (lambda _: None)
    hash_part = part.update if whole_file else (lambda _: None)
    spans = sorted(read_header(path)[0].values(), key=lambda e: e.start) if tensors else []
    found, next_span, current, at = {}, 0, None, 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hash_file(chunk)
            view = memoryview(chunk)
            while view:  # cut the chunk at part and tensor boundaries
                if current is None and next_span < len(spans) and spans[next_span].start <= at:
                    current, tensor_hash, next_span = spans[next_span], hashlib.sha256(), next_span + 1
                cut = min(len(view), step - at % step)
                if current is not None:
                    cut = min(cut, current.end - at)
                elif next_span < len(spans):
                    cut = min(cut, spans[next_span].start - at)
                piece, view = view[:cut], view[cut:]
                hash_part(piece)
                if current is not None:
                    tensor_hash.update(piece)
                at += cut
                if current is not None and at == current.end:
                    found[current.name] = [current.dtype, list(current.shape), tensor_hash.hexdigest()]
                    current = None
                if cut and at % step == 0 and whole_file:
                    parts.append(part.hexdigest())
                    part = hashlib.sha256()
                    hash_part = part.update
    if at != size:
        raise OSError(f"{path}: read {at} of {size} bytes; the file changed while it was read")
    found |= {
        e.name: [e.dtype, list(e.shape), hashlib.sha256().hexdigest()]  # empty tensors at the end
        for e in spans[next_span:]
        if e.start == e.end
    }
    if whole_file and (at % step or not parts):
        parts.append(part.hexdigest())
    return FileDigest(whole.hexdigest() if whole_file else None, size, tuple(parts), found if tensors else None)


class DigestCache:
    """Digests by file identity in an SQLite file ($LORAOPS_HOME/digests.sqlite; None: remember nothing).

    Only a cache: if its file is unusable, files are simply hashed again.
    """

    def __init__(self, path: Path | None = None):
        self.db = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(path, timeout=30, isolation_level=None)
                self.db.execute(
                    "create table if not exists digests (dev int, ino int, size int, mtime_ns int, "
                    "hashed_ns int, record text, primary key (dev, ino, size, mtime_ns))"
                )
            except (OSError, sqlite3.Error):
                self.db = None

    def cached(self, path: Path, key: Identity | None = None) -> FileDigest | None:
        """The file's digests if the cache holds them for its current identity; never reads the file."""
        return self.recorded(path, key, trusted_only=True)

    def recorded(self, path: Path, key: Identity | None = None, trusted_only: bool = False) -> FileDigest | None:
        """The digests last recorded for the file's current identity, also one hashed too soon after its mtime to be
        trusted alone (trusted_only=False): a reader that hashes the bytes again can check them against it."""
        key = key or identity(path)
        row = self._execute(
            "select hashed_ns, record from digests where dev=? and ino=? and size=? and mtime_ns=?", key
        )
        record = json.loads(row[1]) if row and (row[0] > key[3] + RACY_NS or not trusted_only) else None
        return record and FileDigest(record["sha256"], record["bytes"], tuple(record["parts"]), record["tensors"])

    def get(self, path: Path, tensors: bool = False, whole_file: bool = True) -> FileDigest:
        """The file's digests: from the cache when its identity is unchanged and it holds what is asked for."""
        key = identity(path)
        found = self.cached(path, key)
        if found and (not tensors or found.tensors is not None) and (not whole_file or found.sha256 is not None):
            return found
        hashed_ns = time.time_ns()
        digest = digest_file(path, tensors, whole_file)
        self.put(path, digest, key, hashed_ns)
        return digest

    def sha256(self, path: Path) -> str:
        """The file's sha256 (from the cache when its identity is unchanged)."""
        digest = self.get(path).sha256
        assert digest is not None  # get() with whole_file=True hashes the whole file
        return digest

    def tensors(self, path: Path) -> dict[str, list]:
        """Per-tensor [dtype, shape, sha256] of a safetensors file (the whole file is not hashed)."""
        found = self.get(path, tensors=True, whole_file=False).tensors
        assert found is not None  # get() with tensors=True hashes the tensors
        return found

    def put(self, path: Path, digest: FileDigest, key: Identity | None = None, hashed_ns: int | None = None) -> None:
        """Remember digests of `path` taken when it had identity `key` (default: now), starting at `hashed_ns`."""
        key = key or identity(path)
        if self.db is None or key[2] != digest.bytes:
            return
        known = self.cached(path, key)  # keep what an earlier pass learnt of the same file
        if known is not None:
            digest = FileDigest(
                digest.sha256 or known.sha256,
                digest.bytes,
                digest.parts or known.parts,
                digest.tensors if digest.tensors is not None else known.tensors,
            )
        record = json.dumps(
            {"sha256": digest.sha256, "bytes": digest.bytes, "parts": list(digest.parts), "tensors": digest.tensors}
        )
        self._execute(
            "insert or replace into digests values (?, ?, ?, ?, ?, ?)", (*key, hashed_ns or time.time_ns(), record)
        )

    def _execute(self, sql: str, values: tuple):
        if self.db is None:
            return None
        try:
            return self.db.execute(sql, values).fetchone()
        except sqlite3.Error:  # deleted or locked for too long: hashing again is always correct
            return None
