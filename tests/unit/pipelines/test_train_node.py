"""`loraops train-node`: a guest node finds the multi-node runs announced under the shared home."""

import pytest

from pipelines.distributed import announced_runs, join_runs, pending_dir
from pipelines.errors import TrainingNodeError


def test_a_run_that_ends_while_a_node_lists_it_is_passed_over(tmp_path):
    """The host removes its announcement when its run ends; a node that listed it a moment before joins nothing."""
    pending_dir(tmp_path).mkdir(parents=True)
    (pending_dir(tmp_path) / "ended.json").symlink_to(tmp_path / "removed")  # listed, then gone
    assert announced_runs(tmp_path) == []
    with pytest.raises(TrainingNodeError, match="no multi-node run was announced"):
        join_runs(tmp_path, once=True, wait=0.05, poll=0.01)
