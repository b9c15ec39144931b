"""The fleet views at hundreds of tasks, on a stand-in registry (no MLflow): `adapters map` fetches each production
adapter once, orders tasks so planted groups sit together and past MATRIX_LIMIT prints each task's nearest instead
of a matrix; `adapters serve-config` sizes vLLM for 300 production adapters and warns when one replica cannot keep
them all."""

import json
from pathlib import Path

import pytest
import torch

from lora_core import LoraConfig
from lora_core.peft_format import PREFIX, write_adapter
from pipelines import serve_plan
from pipelines.cli import compare
from pipelines.cli.serve_config import render
from pipelines.production import production_versions
from pipelines.serve_plan import ServedAdapter, plan, size
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

    def list_versions(self, task=None, base=None, alias=None):
        self.listed.append({"task": task, "base": base, "alias": alias})
        found = [r for r in self.records if task in (None, r.task) and alias in (None, *r.aliases)]
        return sorted(found, key=lambda r: (r.task, r.version))  # as the registry sorts

    def fetch(self, task, ref=None, mode="adapter"):
        self.fetched.append((task, ref))
        return self.folders[task]

    def check_servable(self, record, engine, folder, config=None):
        pass


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


def test_production_versions_asks_the_registry_once_for_production_only():
    records = [record("b"), record("a"), record("a", aliases=("candidate",), version=2), record("c", aliases=())]
    registry = StandIn(records, {})
    found = production_versions(registry, base="org/llama")  # type: ignore[arg-type]
    assert [(r.task, r.version) for r in found] == [("a", 1), ("b", 1)]
    assert registry.listed == [{"task": None, "base": "org/llama", "alias": "production"}]


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


def served(count: int, size_bytes: int, rank: int = 16) -> list[ServedAdapter]:
    return [
        ServedAdapter(
            name=f"t{i}", version=1, uri=f"s3://a/t{i}", path=f"./loras/t{i}", fetch=None, rank=rank, bytes=size_bytes
        )
        for i in range(count)
    ]


def test_vllm_sizing_for_300_adapters_of_a_7b_model():
    adapter = 168 * 2**20  # Llama-3-8B, every linear layer, r=16, saved in float32
    sizing = size(served(300, adapter, rank=12))
    assert sizing.max_loras == serve_plan.MAX_LORAS == 16  # GPU slots per batch, not one per adapter
    assert sizing.max_lora_rank == 16  # the smallest value vLLM accepts that holds rank 12
    assert sizing.per_replica == 16 * 2**30 // adapter == 97 and sizing.max_cpu_loras == 97
    assert sizing.replicas == 4 and not sizing.inline
    few = size(served(3, adapter))
    assert (few.max_loras, few.max_cpu_loras, few.replicas, few.inline) == (3, 3, 1, True)


def test_serve_config_for_300_production_adapters_uses_the_filesystem_resolver(tmp_path):
    folder = adapter_folder(tmp_path / "one", seed=0)
    records = [record(f"task-{i:03d}") for i in range(300)] + [record("old", aliases=("previous-production",))]
    registry = StandIn(records, {r.task: folder for r in records})
    (group,) = plan(registry, "vllm", None, "org/llama", "/srv/loras")  # type: ignore[arg-type]
    assert len(group.adapters) == 300 and len(registry.fetched) == 300 and len(registry.listed) == 1
    lines = render("vllm", group, "/srv/loras")
    assert sum(line.startswith("aws s3 sync s3://adapters/prod/task-") for line in lines) == 300
    command = next(line for line in lines if "vllm serve" in line)
    assert command == (
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True VLLM_PLUGINS=lora_filesystem_resolver "
        "VLLM_LORA_RESOLVER_CACHE_DIR=/srv/loras vllm serve org/llama --enable-lora --max-loras 16 "
        "--max-lora-rank 8 --max-cpu-loras 300"
    )
    assert not any("--lora-modules" in line or line.startswith("# warning") for line in lines)
    assert {a.path for a in group.adapters} == {f"/srv/loras/task-{i:03d}" for i in range(300)}


def test_local_copies_are_linked_where_the_resolver_looks(tmp_path):
    folder = adapter_folder(tmp_path / "one", seed=0)
    records = [record(f"t{i:02d}", promoted=f"/promoted/t{i:02d}/v1/adapter") for i in range(20)]
    (group,) = plan(StandIn(records, {r.task: folder for r in records}), "vllm", None, None, "loras")  # type: ignore[arg-type]
    lines = render("vllm", group, "loras")
    assert "mkdir -p loras && ln -sfn /promoted/t00/v1/adapter loras/t00" in lines


def test_more_adapters_than_one_replica_holds_get_one_warning_line(tmp_path, monkeypatch):
    folder = adapter_folder(tmp_path / "one", seed=0)
    adapter = (folder / "adapter_model.safetensors").stat().st_size
    monkeypatch.setattr(serve_plan, "CPU_CACHE_BYTES", 100 * adapter)  # a replica holds 100 of these
    records = [record(f"task-{i:03d}") for i in range(300)]
    (group,) = plan(StandIn(records, {r.task: folder for r in records}), "lorax", None, None, "loras")  # type: ignore[arg-type]
    assert group.sizing is not None and (group.sizing.per_replica, group.sizing.replicas) == (100, 3)
    lines = render("lorax", group, "loras")
    warnings = [line for line in lines if line.startswith("# warning")]
    assert len(warnings) == 1 and "300 adapters" in warnings[0] and "(100 in " in warnings[0]
    assert "run 3 replicas" in warnings[0]
    assert lines[1] == "lorax-launcher --model-id org/llama --default-adapter-source s3"  # LoRAX reads S3 itself
    assert not any(line.startswith("aws s3 sync") for line in lines)


@pytest.mark.parametrize("engine", ["vllm", "tgi"])
def test_a_few_adapters_are_listed_on_the_command_line(tmp_path, engine):
    folder = adapter_folder(tmp_path / "one", seed=0)
    records = [record(t, promoted=f"/promoted/{t}/v1/adapter") for t in ("chat", "sql")]
    (group,) = plan(StandIn(records, {r.task: folder for r in records}), engine, None, None, "loras")  # type: ignore[arg-type]
    lines = render(engine, group, "loras")
    if engine == "vllm":
        command = next(line for line in lines if line.startswith("vllm serve"))
        assert command.startswith("vllm serve org/llama --enable-lora --max-loras 2 --max-lora-rank 8 --lora-modules ")
    else:
        assert "--lora-adapters chat=/promoted/chat/v1/adapter,sql=/promoted/sql/v1/adapter" in lines[-2]
