"""Temporary folders owned by a process: named after its pid, so what a killed process left is known and removed."""

import os
import shutil
import tempfile
from pathlib import Path


def scratch_dir(parent: Path, prefix: str) -> Path:
    """A new folder `<prefix><pid>-<random>` in `parent`, after removing those whose process is gone."""
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(f"{prefix}*"):
        pid = old.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{prefix}{os.getpid()}-"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
