"""Manifests: {file: {sha256, bytes}} for a folder of artifacts, its digest, and verification.

The digest (sha256 of the canonical file map) is the content address of a folder: it is the
version tag `loraops.manifest.sha256`, the cache key, and what every copy is checked against.
"""

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from .digests import DigestCache
from .errors import IntegrityError

MANIFEST_FILE = "manifest.json"


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    sha256: str
    bytes: int


class Manifest(BaseModel):
    """What manifest.json holds; written last, so its presence means the folder is complete."""

    model_config = ConfigDict(extra="forbid")
    task: str
    version: int | None = None  # unknown until MLflow numbers the version
    mode: str
    base_fingerprint: str
    files: dict[str, FileEntry]

    @property
    def digest(self) -> str:
        return files_digest(self.files)

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> "Manifest":
        try:
            return cls.model_validate_json(data)
        except ValidationError as e:
            raise IntegrityError(
                f"{where}: damaged manifest ({e.errors()[0]['msg']}); promote the version again"
            ) from None


def files_digest(files: dict[str, FileEntry]) -> str:
    canonical = json.dumps({name: entry.model_dump() for name, entry in sorted(files.items())}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def scan_folder(folder: Path, digests: DigestCache | None = None) -> dict[str, FileEntry]:
    """Every regular file under `folder` (POSIX relative paths), manifest.json excluded."""
    digests = digests or DigestCache()
    files = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name != MANIFEST_FILE:
            files[name] = FileEntry(sha256=digests.sha256(path), bytes=path.stat().st_size)
    return files


def verify_folder(folder: Path, files: dict[str, FileEntry], digests: DigestCache | None = None) -> None:
    """Raise IntegrityError naming the first file that is missing, truncated or altered.

    With a digest cache, a file unchanged since it was last hashed (same inode, size, mtime) is not read again.
    """
    digests = digests or DigestCache()
    for name, expected in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path}: missing; fetch the version again")
        size = path.stat().st_size
        if size != expected.bytes:
            raise IntegrityError(
                f"{path}: {size} bytes, manifest says {expected.bytes}; the copy is truncated or altered"
            )
        actual = digests.sha256(path)
        if actual != expected.sha256:
            raise IntegrityError(
                f"{path}: sha256 {actual[:12]}..., manifest says {expected.sha256[:12]}...; the copy is altered"
            )
