"""Files a user names (task files, data files): regular files only, checked before anything opens them.

A FIFO with no writer blocks an ordinary open() forever, a directory or a symlink loop ends in a traceback, and a
device never ends. `regular_file` says what the path is instead, in one line naming the fix; `read_regular` opens
without blocking (O_NONBLOCK) and checks the file it opened (fstat), so a path swapped for a FIFO between the check
and the read is refused too.
"""

import errno
import os
import stat
from pathlib import Path

from lora_core.model_files import file_kind

from .errors import InputFileError

ERRNO_KINDS = {
    errno.ENOENT: "missing",
    errno.ELOOP: "a symlink loop",
    errno.ENOTDIR: "under a path that is not a folder",
    errno.EACCES: "not readable (permission denied)",
    errno.ENAMETOOLONG: "a name too long for the file system",
}


def regular_file(path: str | Path, what: str, fix: str = "") -> Path:
    """`path` when it is a readable regular file (symlinks followed); else InputFileError naming `what` (e.g.
    "data.path", "task file"), the path, what it is, and `fix` (default: give a regular file)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise _error(path, what, _errno_kind(path, e), fix) from None
    if not stat.S_ISREG(mode):
        raise _error(path, what, file_kind(mode), fix)
    if not os.access(path, os.R_OK):
        raise _error(path, what, ERRNO_KINDS[errno.EACCES], fix)
    return path


def read_regular(path: str | Path, what: str, fix: str = "") -> bytes:
    """The bytes of `path`, a regular file (regular_file's checks), read without ever blocking on a FIFO."""
    path = regular_file(path, what, fix)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise _error(path, what, _errno_kind(path, e), fix) from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # swapped after the check
            raise _error(path, what, file_kind(mode), fix)
        try:
            return f.read()
        except OSError as e:
            raise _error(path, what, f"unreadable ({e.strerror})", fix) from None


def _errno_kind(path: Path, error: OSError) -> str:
    if error.errno == errno.ENOENT and os.path.islink(path):
        return "a symlink to a missing file"
    return ERRNO_KINDS.get(error.errno or 0, f"unreadable ({error.strerror})")


def _error(path: Path, what: str, found: str, fix: str) -> InputFileError:
    fix = "check the path" if found == "missing" else fix or f"give {what} as a regular file"
    return InputFileError(f"{what} {path}: {'no such file' if found == 'missing' else found}; {fix}")
