"""A training run killed mid-way (SIGKILL, no cleanup) resumes from its checkpoint to the bitwise-same adapter."""

import json
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tasks import data_slice, tiny_base, write_task

from pipelines import steps
from pipelines.task_files import load_spec


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("bert"))


KILL_AT_STEP_8 = """
import json, os, signal, sys
from pathlib import Path
from pipelines import steps
from pipelines.results import PreparedData
from pipelines.task_files import load_spec
spec_path, prepared, base, work = sys.argv[1:5]
def on_step(step, loss, lr):
    if step == 8:
        os.kill(os.getpid(), signal.SIGKILL)
steps.fit_adapter(load_spec(spec_path), PreparedData.model_validate_json(prepared), Path(base), Path(work), on_step=on_step)
"""


def test_a_run_killed_mid_training_resumes_to_the_same_adapter(tmp_path, bert_base):
    # with validation every 3 steps: the best weights so far and the passes made resume too
    path = write_task(
        tmp_path,
        "resume",
        bert_base,
        data_slice(tmp_path, 120),
        data__validation_fraction=0.2,
        training__max_steps=12,
        training__checkpoint_every=5,
        training__eval_every=3,
    )
    spec = load_spec(path)
    prepared = steps.prepare_data(spec, tmp_path / "work")
    reference = steps.fit_adapter(spec, prepared, bert_base, tmp_path / "uninterrupted")
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_AT_STEP_8,
            str(path),
            prepared.model_dump_json(),
            str(bert_base),
            str(tmp_path / "killed"),
        ],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads((tmp_path / "killed" / "checkpoint" / "state.json").read_text())["schedule_step"] == 5
    resumed = steps.fit_adapter(spec, prepared, bert_base, tmp_path / "killed")
    a = load_file(f"{reference.adapter}/adapter_model.safetensors")
    b = load_file(f"{resumed.adapter}/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "killed" / "checkpoint").exists()
