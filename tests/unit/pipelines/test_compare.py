"""Subspace similarity between registered adapters (`adapters compare`, `adapters map`) on planted adapters whose φ
is known: identical input subspaces give 1, orthogonal ones 0; versions on different bases are refused."""

import argparse
import json

import pytest
import torch
from conftest import build

from lora_core import LoraConfig, inject, save_adapter
from lora_core.injection import lora_layers
from pipelines.cli import compare
from pipelines.cli.main import main
from registry import AdapterRegistry, RegistryError

DATASET = "d" * 64
LOADER = "pipelines.pyfunc"  # the pyfunc loader module of every registered MLflow Model


@pytest.fixture
def registry(embedded_home):
    return AdapterRegistry()


def planted(tmp_path, base_model, name: str, rows: list[int]) -> str:
    """An adapter whose A in every module spans the input directions `rows` (unit vectors), B random."""
    model = inject(
        base_model(), LoraConfig(r=len(rows), alpha=len(rows), target_modules=["query", "value"], task_type="SEQ_CLS")
    )
    g = torch.Generator().manual_seed(len(name))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            a.zero_()
            for i, row in enumerate(rows):
                a[i, row] = 1.0 + i  # scaled rows: the span, not the lengths, decides φ
            b.copy_(torch.randn(b.shape, generator=g))
    save_adapter(model, tmp_path / name, base_model_name_or_path="tiny/bert")
    return str(tmp_path / name)


def register(registry, tmp_path, task: str, rows: list[int], seed: int = 0):
    base_model = lambda: build("bert", seed=seed)  # noqa: E731
    folder = tmp_path / f"base-{seed}"
    if not folder.exists():
        base_model().save_pretrained(folder)
    base = registry.register_base(folder, name=f"tiny/bert-{seed}")
    adapter = planted(tmp_path, base_model, f"{task}-{'-'.join(map(str, rows))}-{seed}", rows)
    return registry.register(task, adapter, base, DATASET, {"accuracy": 0.5}, loader_module=LOADER)


def args(**values) -> argparse.Namespace:
    return argparse.Namespace(**{"ref": None, "other": None, "json": False, "base": None, "out": None} | values)


def test_identical_subspaces_give_one_and_orthogonal_ones_zero(registry, tmp_path):
    register(registry, tmp_path, "topics", [0, 1])
    register(registry, tmp_path, "topics", [1, 0])  # the same span, other order and lengths
    register(registry, tmp_path, "topics", [2, 3])  # orthogonal to both
    same = compare.compare(args(ref="topics:1", other="topics:2"), print_=lambda *_: None)
    assert same["mean_phi_1_1"] == pytest.approx(0.0, abs=1e-9)  # top directions: e1 (length 2) vs e0 (length 2)
    assert same["mean_phi_k_k"] == pytest.approx(1.0)
    assert len(same["modules"]) == 4 and all(m["k"] == 2 for m in same["modules"].values())
    apart = compare.compare(args(ref="topics:1", other="topics:3"), print_=lambda *_: None)
    assert apart["mean_phi_k_k"] == pytest.approx(0.0, abs=1e-12)
    assert apart["mean_phi_1_1"] == pytest.approx(0.0, abs=1e-12)


def test_versions_on_different_bases_are_refused_with_both_fingerprints(registry, tmp_path, capsys):
    one = register(registry, tmp_path, "topics", [0, 1], seed=0)
    other = register(registry, tmp_path, "topics", [0, 1], seed=1)
    capsys.readouterr()  # what saving the bases printed
    with pytest.raises(RegistryError) as error:
        compare.compare(args(ref="topics:1", other="topics:2"))
    assert one.base_fingerprint[:12] in str(error.value) and other.base_fingerprint[:12] in str(error.value)
    assert main(["adapters", "compare", "topics:1", "topics:2"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_map_pairs_production_adapters_on_one_base(registry, tmp_path):
    for task, rows in (("alpha", [0, 1]), ("beta", [0, 1]), ("gamma", [4, 5])):
        version = register(registry, tmp_path, task, rows).version
        registry.promote(task, version, progress=False)
    result = compare.task_map(args(base="tiny/bert-0", out=str(tmp_path / "map")), print_=lambda *_: None)
    order = [(t.task, t.version) for t in result.tasks]
    assert sorted(order) == [("alpha", 1), ("beta", 1), ("gamma", 1)]
    assert abs(order.index(("alpha", 1)) - order.index(("beta", 1))) == 1  # the same span sits side by side
    phi = {
        (a.task, b.task): result.mean_phi_k_k[i][j]
        for i, a in enumerate(result.tasks)
        for j, b in enumerate(result.tasks)
    }
    assert phi["alpha", "beta"] == pytest.approx(1.0) and phi["alpha", "gamma"] == pytest.approx(0.0, abs=1e-12)
    alpha = next(t for t in result.tasks if t.task == "alpha")
    assert phi["beta", "beta"] == 1.0 and alpha.nearest[0].task == "beta" and alpha.nearest[0].phi == pytest.approx(1.0)
    assert json.loads((tmp_path / "map" / "map.json").read_text())["mean_phi_k_k"] == result.mean_phi_k_k
    assert (tmp_path / "map" / "map.png").stat().st_size > 1000


def test_a_map_needs_two_tasks_in_production(registry, tmp_path):
    registry.promote("alone", register(registry, tmp_path, "alone", [0, 1]).version, progress=False)
    with pytest.raises(RegistryError, match="1 task.* in production on base 'tiny/bert-0'; a map needs at least two"):
        compare.task_map(args(base="tiny/bert-0", out=str(tmp_path / "map")))
