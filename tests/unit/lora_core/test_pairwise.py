"""lora_core.analysis.pairwise: φ(k, k) of every pair of adapters, batched, equals the pair-by-pair computation;
the clustered order keeps planted groups together; nearest neighbours come most similar first."""

import math

import pytest
import torch

from lora_core import LoraConfig
from lora_core.analysis import subspace_similarity
from lora_core.analysis.pairwise import cluster_order, nearest, pairwise_similarity
from lora_core.peft_format import PREFIX, write_adapter

WIDTHS = {"layers.0.q_proj": 24, "layers.0.v_proj": 16, "layers.1.q_proj": 24, "layers.1.o_proj": 6}


def write_random(path, ranks: dict[str, int], seed: int, directions: torch.Tensor | None = None):
    """A PEFT adapter folder with A: [r, k] per module (random, or spanning `directions`' rows plus a little noise)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, r in ranks.items():
        k = WIDTHS[module]
        a = torch.randn(r, k, generator=g)
        if directions is not None:
            a = torch.randn(r, directions.shape[0], generator=g) @ directions[:, :k] + 0.05 * a
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a
        tensors[f"{PREFIX}{module}.lora_B.weight"] = torch.randn(8, r, generator=g)
    top = max(ranks.values())
    config = LoraConfig(
        r=top, alpha=top, target_modules=sorted({m.rsplit(".", 1)[-1] for m in ranks}),
        rank_pattern={m: r for m, r in ranks.items() if r != top},
    )  # fmt: skip
    return write_adapter(path, tensors, config)


def pair_by_pair(folders) -> torch.Tensor:
    """The definition: per pair, per shared module, φ(q, q) with q = min(r1, r2); the mean over modules."""
    n = len(folders)
    phi = torch.full((n, n), math.nan, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            try:
                grids = subspace_similarity(folders[i], folders[j])
            except ValueError:  # no shared module
                continue
            phi[i, j] = sum(float(g[min(g.shape) - 1, min(g.shape) - 1]) for g in grids.values()) / len(grids)
    return phi.fill_diagonal_(1.0)


@pytest.fixture
def mixed(tmp_path):
    """Seven adapters of ranks 2, 4 and 8 (and one rank above a module's width: o_proj has k = 6), some adapting
    modules the others do not; the last shares no module with the first."""
    plans = [
        {"layers.0.q_proj": 4, "layers.0.v_proj": 4},
        {"layers.0.q_proj": 8, "layers.0.v_proj": 8, "layers.1.q_proj": 8},
        {"layers.0.q_proj": 2, "layers.1.q_proj": 2, "layers.1.o_proj": 2},
        {"layers.0.q_proj": 4, "layers.0.v_proj": 2, "layers.1.o_proj": 8},
        {"layers.0.v_proj": 8, "layers.1.q_proj": 4},
        {"layers.0.q_proj": 8, "layers.0.v_proj": 4, "layers.1.q_proj": 2, "layers.1.o_proj": 4},
        {"layers.1.q_proj": 4, "layers.1.o_proj": 4},
    ]
    return [write_random(tmp_path / f"a{i}", plan, seed=i) for i, plan in enumerate(plans)]


def test_batched_phi_equals_the_pair_by_pair_computation(mixed):
    expected = pair_by_pair(mixed)
    got = pairwise_similarity(mixed)
    assert torch.allclose(got.phi, expected, atol=1e-10, equal_nan=True)
    assert math.isnan(float(got.phi[0, 6])) and int(got.shared[0, 6]) == 0  # nothing in common
    assert int(got.shared[1, 5]) == 3 and int(got.shared[5, 5]) == 4
    assert 0.0 < float(got.phi[0, 1]) < 1.0 and torch.equal(got.phi.diagonal(), torch.ones(7, dtype=torch.float64))


def test_small_budgets_split_modules_and_rows_without_changing_a_number(mixed):
    whole = pairwise_similarity(mixed)
    # One module per chunk and one adapter's rows per Gram block: the same numbers by another path.
    tight = pairwise_similarity(mixed, budget_bytes=1, block_bytes=1)
    assert torch.allclose(tight.phi, whole.phi, atol=1e-12, equal_nan=True) and torch.equal(tight.shared, whole.shared)


def test_the_same_span_gives_one_whatever_the_factor(tmp_path):
    directions = torch.linalg.qr(torch.randn(24, 4, generator=torch.Generator().manual_seed(0)))[0].T  # [4, 24]
    ranks = {"layers.0.q_proj": 4, "layers.1.q_proj": 4}
    g = torch.Generator().manual_seed(1)
    folders = []
    for i in range(2):
        tensors = {}
        for module in ranks:
            tensors[f"{PREFIX}{module}.lora_A.weight"] = torch.randn(4, 4, generator=g) @ directions
            tensors[f"{PREFIX}{module}.lora_B.weight"] = torch.randn(8, 4, generator=g)
        folders.append(write_adapter(tmp_path / f"s{i}", tensors, LoraConfig(r=4, alpha=4, target_modules=["q_proj"])))
    assert float(pairwise_similarity(folders).phi[0, 1]) == pytest.approx(1.0, abs=1e-9)


def test_the_clustered_order_puts_each_planted_group_together(tmp_path):
    g = torch.Generator().manual_seed(7)
    basis = torch.linalg.qr(torch.randn(24, 24, generator=g, dtype=torch.float64))[0].T.float()
    groups = {"x": basis[:4], "y": basis[8:12], "z": basis[16:20]}  # three orthogonal 4-dim input subspaces
    names, folders = [], []
    for i in range(12):  # interleaved: x0 y0 z0 x1 y1 z1 ...
        group = "xyz"[i % 3]
        names.append(f"{group}{i // 3}")
        ranks = {"layers.0.q_proj": 4, "layers.1.q_proj": 4}
        folders.append(write_random(tmp_path / names[-1], ranks, seed=100 + i, directions=groups[group]))
    similarity = pairwise_similarity(folders)
    order = [names[i][0] for i in cluster_order(similarity.phi)]
    assert sorted(order) == sorted(n[0] for n in names)
    runs = [letter for k, letter in enumerate(order) if k == 0 or order[k - 1] != letter]
    assert sorted(runs) == ["x", "y", "z"], order  # each group one contiguous block
    neighbours = nearest(similarity.phi, 3)
    for i, found in enumerate(neighbours):
        assert {names[j][0] for j, _ in found} == {names[i][0]}  # a task's 3 nearest are its own group
        assert [phi for _, phi in found] == sorted((phi for _, phi in found), reverse=True)


def test_clustering_follows_the_similarity_matrix_and_nearest_skips_unshared_pairs():
    phi = torch.tensor(
        [
            [1.0, 0.1, 0.9, 0.2],
            [0.1, 1.0, 0.15, 0.8],
            [0.9, 0.15, 1.0, math.nan],
            [0.2, 0.8, math.nan, 1.0],
        ],
        dtype=torch.float64,
    )
    order = cluster_order(phi)
    assert sorted(order) == [0, 1, 2, 3] and abs(order.index(0) - order.index(2)) == 1
    assert abs(order.index(1) - order.index(3)) == 1
    assert nearest(phi, 3)[2] == [(0, 0.9), (1, 0.15)]
    assert cluster_order(torch.ones(1, 1)) == [0]
