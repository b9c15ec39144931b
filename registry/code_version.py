"""Which code produced an adapter: LORAOPS_CODE_VERSION, else the git commit, else the package version."""

import os
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def code_version() -> str:
    if os.environ.get("LORAOPS_CODE_VERSION"):
        return os.environ["LORAOPS_CODE_VERSION"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
        return f"git:{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        try:
            return f"loraops=={metadata.version('loraops')}"
        except metadata.PackageNotFoundError:
            return "unknown"
