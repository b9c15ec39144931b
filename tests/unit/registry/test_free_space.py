"""Disk space: checked before large writes (needs on one disk counted together), and a disk that fills up anyway is
one DiskFull line with nothing half-written left where the write went."""

import contextlib
import errno
import hashlib
import os
import subprocess
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest
from mlflow import MlflowClient

from registry import free_space
from registry.errors import DiskFull, NoSpace
from registry.free_space import MARGIN, SpaceNeed, check_space
from registry.manifest import FileEntry
from registry.runs import RunTracking
from registry.settings import RegistrySettings
from registry.stores import LocalStore

MiB = 2**20
Usage = namedtuple("Usage", "total used free")
TEMPORARY_FILE = tempfile.NamedTemporaryFile


def with_free(monkeypatch, free: int) -> None:
    monkeypatch.setattr(free_space.shutil, "disk_usage", lambda path: Usage(10 * free, 9 * free, free))


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def failing_temporary_file(*args, **kwargs):
    handle = TEMPORARY_FILE(*args, **kwargs)
    handle.write = enospc
    return handle


@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    """A real file system of `size` at `folder`, where this machine lets us mount one (else the test skips)."""
    folder.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    ).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_needs_on_one_disk_are_counted_together(tmp_path, monkeypatch):
    with_free(monkeypatch, 100 * MiB + MARGIN)
    merged, promoted = (
        SpaceNeed(tmp_path / "work", 60 * MiB, "the merged model"),
        SpaceNeed(tmp_path / "promoted" / "not-yet", 60 * MiB, "the promoted copy"),
    )
    check_space([merged])
    check_space([promoted])
    with pytest.raises(NoSpace) as refused:
        check_space([merged, promoted])  # each fits alone, both do not
    line = str(refused.value)
    assert "\n" not in line and line.startswith(f"{tmp_path}: 164.0 MiB free on its disk, 184.0 MiB needed"), line
    assert "the merged model" in line and "the promoted copy" in line and "LORAOPS_HOME" in line


def test_a_real_small_disk_refuses_what_it_cannot_hold(tmp_path):
    with tmpfs(tmp_path / "small", "4m") as small:
        with pytest.raises(NoSpace, match=f"^{small}: "):
            check_space([SpaceNeed(small / "out", 8 * MiB, "the merged model")])


@pytest.mark.parametrize("boundary", ["fsync", "write"])
def test_a_promoted_file_the_disk_cannot_hold_leaves_nothing_behind(tmp_path, monkeypatch, boundary):
    source = tmp_path / "model.safetensors"
    source.write_bytes(os.urandom(3 * MiB))
    entry = FileEntry(sha256=hashlib.sha256(source.read_bytes()).hexdigest(), bytes=3 * MiB)
    store = LocalStore(tmp_path / "promoted")
    if boundary == "fsync":  # the write-back fails, as on a full disk with delayed allocation
        monkeypatch.setattr("registry.stores.os.fsync", enospc)
    else:  # the first write fails
        monkeypatch.setattr("registry.stores.tempfile.NamedTemporaryFile", failing_temporary_file)
    with pytest.raises(DiskFull) as full:
        store.upload(source, "task/v1/merged/model.safetensors", entry)
    assert str(full.value).startswith(f"{tmp_path / 'promoted'}: the disk filled up while writing task/v1/merged")
    assert [p for p in (tmp_path / "promoted").rglob("*") if p.is_file()] == []


def test_a_real_full_disk_is_one_line_and_no_temporary_file(tmp_path):
    with tmpfs(tmp_path / "small", "1m") as small:
        store = LocalStore(small)
        with pytest.raises(DiskFull, match="nothing half-written was kept"):
            store.put_bytes("task/v1/adapter/manifest.json", b"x" * (2 * MiB))
        assert [p for p in small.rglob("*") if p.is_file()] == []


def test_a_promotion_too_big_for_the_target_is_refused_before_a_byte_is_written(tmp_path, monkeypatch):
    source = tmp_path / "model.safetensors"
    source.write_bytes(b"w" * MiB)
    with_free(monkeypatch, MiB)
    with pytest.raises(NoSpace):
        LocalStore(tmp_path / "promoted").upload(
            source, "t/v1/merged/model.safetensors", FileEntry(sha256="0" * 64, bytes=MiB)
        )
    assert not (tmp_path / "promoted").exists()


def test_artifacts_the_disk_cannot_hold_are_removed_from_the_run(tmp_path, monkeypatch):
    settings = RegistrySettings.from_env(home=tmp_path / "home", tracking_uri=None)
    runs = RunTracking(MlflowClient(settings.tracking_uri), settings)
    run_id = runs.start("full", "full-1", {})
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"w" * 1024)
    real = runs.client.log_artifacts

    def fills_up(run, local, path):  # MLflow copies the first file, then the disk is full
        real(run, local, path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.client, "log_artifacts", fills_up)
    with pytest.raises(DiskFull, match="the run's merged artifacts"):
        runs.log_artifacts(run_id, folder, "merged")
    artifacts = Path(runs.client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    assert not (artifacts / "merged").exists()
