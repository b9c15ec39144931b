"""Family: a path a user names that is not a readable regular file. Each member is refused in one line naming the
path and what it is, without blocking (a FIFO with no writer must not hang the read)."""

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from pipelines.errors import InputFileError
from pipelines.input_files import read_regular, regular_file


def fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "pipe")
    return tmp / "pipe"


def directory(tmp: Path) -> Path:
    (tmp / "folder.jsonl").mkdir()
    return tmp / "folder.jsonl"


def symlink_loop(tmp: Path) -> Path:
    (tmp / "a").symlink_to(tmp / "b")
    (tmp / "b").symlink_to(tmp / "a")
    return tmp / "a"


def dangling_symlink(tmp: Path) -> Path:
    (tmp / "link").symlink_to(tmp / "gone")
    return tmp / "link"


def unix_socket(tmp: Path) -> Path:
    path = tmp / "s"  # AF_UNIX paths are short: a pytest tmp path can be too long, so bind relative to it
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        server = socket.socket(socket.AF_UNIX)
        server.bind("s")
        server.close()
    finally:
        os.chdir(cwd)
    return path


def through_a_file(tmp: Path) -> Path:
    (tmp / "plain").write_text("x")
    return tmp / "plain" / "inside.jsonl"


# (member, how to make it, what the line calls it)
NOT_REGULAR: list[tuple[str, Callable[[Path], Path], str]] = [
    ("fifo", fifo, "a FIFO (named pipe)"),
    ("directory", directory, "a directory"),
    ("symlink-loop", symlink_loop, "a symlink loop"),
    ("dangling-symlink", dangling_symlink, "a symlink to a missing file"),
    ("socket", unix_socket, "a socket"),
    ("missing", lambda t: t / "nowhere.jsonl", "no such file"),
    ("under-a-file", through_a_file, "under a path that is not a folder"),
    ("char-device", lambda t: Path("/dev/null"), "a character device"),
]


@pytest.mark.parametrize("member, make, says", NOT_REGULAR, ids=[m[0] for m in NOT_REGULAR])
@pytest.mark.parametrize("check", [regular_file, read_regular], ids=["check", "read"])
def test_a_path_that_is_not_a_regular_file_is_one_line_naming_it(member, make, says, check, tmp_path):
    path = make(tmp_path)
    with pytest.raises(InputFileError) as caught:
        check(path, "data.path")
    message = str(caught.value)
    assert message.startswith(f"data.path {path}: {says}; ") and "\n" not in message


def test_a_fix_given_by_the_caller_ends_the_line(tmp_path):
    with pytest.raises(InputFileError, match=r": a directory; point data.path at a \.jsonl file$"):
        regular_file(directory(tmp_path), "data.path", "point data.path at a .jsonl file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_is_named(tmp_path):
    path = tmp_path / "secret.jsonl"
    path.write_text("{}")
    path.chmod(0)
    with pytest.raises(InputFileError, match="not readable"):
        read_regular(path, "data.path")


def test_a_regular_file_and_a_symlink_to_one_are_read(tmp_path):
    (tmp_path / "real.jsonl").write_bytes(b'{"a": 1}\n')
    (tmp_path / "alias.jsonl").symlink_to(tmp_path / "real.jsonl")
    assert read_regular(tmp_path / "alias.jsonl", "data.path") == b'{"a": 1}\n'
    assert regular_file(tmp_path / "real.jsonl", "data.path") == tmp_path / "real.jsonl"
