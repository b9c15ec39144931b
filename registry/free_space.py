"""Disk space for large writes: checked before they start, and a full disk (ENOSPC) as one line naming the folder.

The big files of a run are the merged model (about the base's size: same dtype, same tensors) and its copies: the
merge output, the registered artifacts (embedded MLflow keeps them under $LORAOPS_HOME/mlartifacts), the promoted
folder. A check counts every need on one file system together, plus a margin for logs and databases. Writes that
fail anyway (another process filled the disk meanwhile) leave nothing half-written where they write: each writer
writes to a temporary name and renames, and removes the temporary on failure.
"""

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from .errors import DiskFull, NoSpace

MARGIN = 64 * 2**20  # room left for the databases, logs and manifests that are written beside the big files
FULL = (errno.ENOSPC, errno.EDQUOT)


class SpaceNeed(NamedTuple):
    folder: Path  # where it is written (need not exist yet)
    bytes: int
    what: str  # for the message: "the merged model", "the promoted copy"


def existing(folder: Path) -> Path:
    """`folder`, or its nearest parent that exists: the file system it will be written to."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def size_of(path: Path, pattern: str = "*") -> int:
    """Bytes of a file, or of the files matching `pattern` in a folder tree."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def check_space(needs: list[SpaceNeed]) -> None:
    """Raise NoSpace (one line: the folder, the space free and needed, what needs it) unless every file system among
    the needs' folders has room for all the needs on it together, plus MARGIN."""
    groups: dict[int, list[SpaceNeed]] = {}
    for need in needs:
        if need.bytes > 0:
            groups.setdefault(existing(need.folder).stat().st_dev, []).append(need)
    for group in groups.values():
        where = existing(group[0].folder)
        total = sum(n.bytes for n in group) + MARGIN
        free = shutil.disk_usage(where).free
        if free < total:
            parts = ", ".join(f"{n.what} in {n.folder} {human(n.bytes)}" for n in group)
            raise NoSpace(
                f"{where}: {human(free)} free on its disk, {human(total)} needed ({parts}, {human(MARGIN)} spare); "
                f"free space there, or point LORAOPS_HOME / the promotion target at a disk with room"
            )


@contextlib.contextmanager
def disk_writes(folder: Path, what: str) -> Iterator[None]:
    """A full disk (ENOSPC, or a quota: EDQUOT) while writing `what` under `folder` becomes DiskFull, one line; the
    writer inside removes its own temporary files."""
    try:
        yield
    except OSError as e:
        if e.errno not in FULL:
            raise
        free = shutil.disk_usage(existing(folder)).free
        raise DiskFull(
            f"{folder}: the disk filled up while writing {what} ({human(free)} free now); nothing half-written was "
            f"kept; free space there and run the command again"
        ) from None
