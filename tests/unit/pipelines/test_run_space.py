"""A run's disk space, estimated from its base before training: the merged model and its copies on this machine,
refused in one line (exit 2) before anything is trained, registered or promoted."""

import importlib
from collections import namedtuple

import pytest
from tasks import data_slice, tiny_base, write_task

from pipelines.run_space import ADAPTER_SHARE, WORK_COPIES, base_bytes, run_needs
from pipelines.task_files import load_spec
from registry import free_space
from registry.settings import RegistrySettings

cli = importlib.import_module("pipelines.cli.main")
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("base") / "bert")


@pytest.mark.parametrize("mode, copies", [("merged", 3), ("adapter", 0)])
def test_a_merged_run_needs_the_base_three_times_over(base, tmp_path, mode, copies):
    task = load_spec(write_task(tmp_path, "space", base, data_slice(tmp_path, 60), promotion={"mode": mode}))
    settings = RegistrySettings.from_env(home=tmp_path / "home", tracking_uri=None)
    needs = run_needs(task, settings, base)
    size = base_bytes(base)
    assert size > 10**6  # the base's safetensors, not its tokenizer files
    assert [n.folder for n in needs] == [tmp_path / "home" / p for p in ("work/space", "mlartifacts", "promoted")]
    assert sum(n.bytes for n in needs) == copies * size + (WORK_COPIES + 2) * (size // ADAPTER_SHARE)


def test_a_run_without_room_is_refused_before_training_in_one_line(base, tmp_path, monkeypatch, capsys):
    task = write_task(tmp_path, "space", base, data_slice(tmp_path, 60), promotion={"mode": "merged"})
    home = tmp_path / "home"
    monkeypatch.setenv("LORAOPS_HOME", str(home))
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "LORAOPS_PROMOTION_TARGET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(free_space.shutil, "disk_usage", lambda path: Usage(2**30, 2**30 - 2**20, 2**20))
    assert cli.main(["run", str(task)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1.0 MiB free on its disk" in err and "the merged model" not in err, err
    assert "training and merge" in err and "the promoted copy" in err
    assert not (home / "mlflow.db").exists() and not (home / "work" / "space").exists()
