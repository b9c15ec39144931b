"""The fleet views at hundreds of tasks, on a stand-in registry (no MLflow): `adapters map` fetches each production
adapter once, orders tasks so planted groups sit together and past MATRIX_LIMIT prints each task's nearest instead
of a matrix."""

import json
from pathlib import Path

import torch

from lora_core import LoraConfig
from lora_core.peft_format import PREFIX, write_adapter
from pipelines.cli import compare
from pipelines.production import production_versions
from pipelines.task_map import MappedTask, Neighbour, TaskMap, build_task_map
from registry import LoraSummary, VersionRecord

FINGERPRINT = "f" * 64


def record(task: str, aliases=("production",), version: int = 1, promoted: str | None = None) -> VersionRecord:
    return VersionRecord(
        task=task,
        version=version,
        aliases=list(aliases),
        base_name="org/llama",
        base_fingerprint=FINGERPRINT,
        base_version=1,
        dataset_fingerprint="d" * 64,
        lora=LoraSummary(r=8, alpha=16, targets=["q_proj", "v_proj"]),
        metrics={},
        code_version="test",
        run_id=None,
        created="2026-01-01T00:00:00Z",
        artifacts={"adapter": f"mlflow-artifacts:/{task}"},
        manifests={"adapter": "m" * 64},
        promoted={"adapter": promoted or f"s3://adapters/prod/{task}/v{version}/adapter"},
    )


class StandIn:
    """The registry calls the fleet views make, counted: list_versions once, fetch once per production adapter."""

    def __init__(self, records: list[VersionRecord], folders: dict[str, Path]):
        self.records, self.folders = records, folders
        self.listed: list[dict] = []
        self.fetched: list[tuple[str, int]] = []

    def list_versions(self, task=None, base=None):
        self.listed.append({"task": task, "base": base})
        return [r for r in self.records if task in (None, r.task)]

    def fetch(self, task, ref=None, mode="adapter"):
        self.fetched.append((task, ref))
        return self.folders[task]


def adapter_folder(path: Path, seed: int, directions: torch.Tensor | None = None, r: int = 4) -> Path:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(2):
        for name in ("q_proj", "v_proj"):
            a = torch.randn(r, 32, generator=g)
            if directions is not None:
                a = torch.randn(r, len(directions), generator=g) @ directions + 0.05 * a
            tensors[f"{PREFIX}model.layers.{layer}.self_attn.{name}.lora_A.weight"] = a
            tensors[f"{PREFIX}model.layers.{layer}.self_attn.{name}.lora_B.weight"] = torch.randn(32, r, generator=g)
    config = LoraConfig(r=r, alpha=2 * r, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return write_adapter(path, tensors, config, base_model_name_or_path="org/llama")


def test_production_versions_asks_the_registry_once_and_keeps_only_production():
    records = [record("b"), record("a"), record("a", aliases=("candidate",), version=2), record("c", aliases=())]
    registry = StandIn(records, {})
    found = production_versions(registry, base="org/llama")  # type: ignore[arg-type]
    assert [(r.task, r.version) for r in found] == [("a", 1), ("b", 1)]
    assert registry.listed == [{"task": None, "base": "org/llama"}]


def test_the_map_fetches_each_adapter_once_and_puts_planted_groups_together(tmp_path):
    basis = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(0)))[0].T
    spans = {"law": basis[:4], "code": basis[10:14], "chat": basis[20:24]}
    folders, records = {}, []
    for i in range(18):  # 18 tasks > MATRIX_LIMIT, the groups interleaved in name order
        group = list(spans)[i % 3]
        task = f"{group}-{i:02d}"
        folders[task] = adapter_folder(tmp_path / task, seed=i, directions=spans[group])
        records.append(record(task))
    records.append(record("law-99", aliases=("candidate",)))  # not in production: neither fetched nor mapped
    registry = StandIn(records, folders)
    result = build_task_map(registry, "org/llama")  # type: ignore[arg-type]
    assert sorted(registry.fetched) == sorted((t, 1) for t in folders)  # each production adapter once
    groups = [t.task.split("-")[0] for t in result.tasks]
    assert sum(groups[k] != groups[k - 1] for k in range(1, len(groups))) == 2  # three contiguous blocks
    for t in result.tasks:
        assert len(t.nearest) == 3 and all(n.task.split("-")[0] == t.task.split("-")[0] for n in t.nearest)
    i, j = groups.index("law"), groups.index("code")
    within, across = result.mean_phi_k_k[i][i + 1], result.mean_phi_k_k[i][j]
    assert (
        result.mean_phi_k_k[i][i] == 1.0 and within is not None and across is not None and across < 0.1 < 0.5 < within
    )
    lines = compare.map_lines(result)
    assert "nearest" in lines[0] and len(lines[1].splitlines()) == 2 + 18  # header, rule, one row per task


def fake_map(count: int, name=lambda i: f"task-{i:03d}") -> TaskMap:
    tasks = [
        MappedTask(task=name(i), version=1, nearest=[Neighbour(task=name((i + 1) % count), phi=0.5)])
        for i in range(count)
    ]
    phi = [[1.0 if i == j else 0.5 for j in range(count)] for i in range(count)]
    return TaskMap(base="org/llama", base_fingerprint=FINGERPRINT, tasks=tasks, mean_phi_k_k=phi)


def test_a_small_map_prints_the_matrix_and_a_large_one_each_tasks_nearest():
    small = compare.map_lines(fake_map(compare.MATRIX_LIMIT))
    assert len(small) == 1 and small[0].splitlines()[0].split() == ["task", *map(str, range(1, 17))]
    large = compare.map_lines(fake_map(200))
    assert large[0].startswith("200 tasks, in clustered order: each task's 3 nearest")
    rows = large[1].splitlines()
    assert rows[0].split() == ["task", "v", "nearest", "(phi)"] and len(rows) == 202
    assert rows[2].split() == ["task-000", "1", "task-001", "0.50"]
    assert max(len(line) for line in rows) < 100  # one short line per task, however many tasks


def test_long_task_names_are_cut_to_fit_and_unshared_pairs_print_a_dash():
    long = fake_map(3, name=lambda i: f"{'a-very-long-task-name-' * 3}{i}")  # 67 characters
    table = compare.map_lines(
        long.model_copy(update={"mean_phi_k_k": [[1.0, None, 0.5], [None, 1.0, 0.5], [0.5, 0.5, 1.0]]})
    )
    first = table[0].splitlines()[2]
    assert first.split()[1] == "a-very-long-task-name-a-ver…" and first.split()[3] == "-"


def test_the_map_json_and_picture_are_written_in_clustered_order(tmp_path, monkeypatch):
    folders = {t: adapter_folder(tmp_path / t, seed=i) for i, t in enumerate(("x", "y", "z"))}
    registry = StandIn([record(t) for t in folders], folders)
    monkeypatch.setattr(compare, "AdapterRegistry", lambda: registry)
    printed: list[str] = []
    args = type("Args", (), {"base": "org/llama", "out": str(tmp_path / "map")})()
    result = compare.task_map(args, print_=printed.append)
    written = json.loads((tmp_path / "map" / "map.json").read_text())
    assert [t["task"] for t in written["tasks"]] == [t.task for t in result.tasks] and len(written["mean_phi_k_k"]) == 3
    assert (tmp_path / "map" / "map.png").stat().st_size > 1000 and printed[-1].startswith("wrote ")
