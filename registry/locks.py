"""Advisory file locks between processes on one machine."""

import contextlib
import fcntl
import hashlib
from pathlib import Path


@contextlib.contextmanager
def exclusive(folder: Path, name: str):
    """An advisory lock (flock) named after `name`, released when the block ends or the process dies."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / hashlib.sha256(name.encode()).hexdigest()[:32], "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
