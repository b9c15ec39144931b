"""Which code produced an adapter: LORAOPS_CODE_VERSION, else the git commit, else the package version."""

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def code_version() -> str:
    return os.environ.get("LORAOPS_CODE_VERSION") or _installed_version()


@functools.cache
def _installed_version() -> str:
    """Once per process: it runs git twice."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        try:
            return f"loraops=={metadata.version('loraops')}"
        except metadata.PackageNotFoundError:
            return "unknown"
