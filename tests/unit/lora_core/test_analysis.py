"""lora_core.analysis: spectra, rank choice, φ, amplification, compress, extract."""

import math

import peft
import pytest
import torch
from conftest import build, inputs, output, randomize_b, rel_diff

from lora_core import AdapterMismatchError, LoraConfig, LoraError, inject, load_adapter, save_adapter
from lora_core.analysis import (
    adapter_report,
    amplification_factor,
    compress,
    dense_spectrum,
    extract,
    read_adapter,
    similarity_grid,
    spectrum,
    subspace_similarity,
)
from lora_core.analysis.plots import plot_ranks, plot_scree, plot_similarity


def orthonormal(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))[0]


def factors_with_spectrum(sigma: list[float], d: int = 40, k: int = 30, seed: int = 0):
    """B: [d, r], A: [r, k] with B·A = U diag(σ) Vᵀ exactly."""
    s = torch.tensor(sigma, dtype=torch.float64)
    u, v = orthonormal(d, len(sigma), seed), orthonormal(k, len(sigma), seed + 1)
    return u * s.sqrt(), s.sqrt()[:, None] * v.T


def test_factor_spectrum_equals_dense_svd():
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(50, 8, generator=g), torch.randn(8, 70, generator=g)
    s = spectrum(b, a, scale=2.5)
    dense = torch.linalg.svdvals(2.5 * b.double() @ a.double())
    assert torch.allclose(s.sigma, dense[:8], rtol=1e-10)
    # The singular vectors reproduce ΔW.
    assert torch.allclose(s.u * s.sigma @ s.v.T, 2.5 * b.double() @ a.double(), atol=1e-9)


def test_exact_rank_is_recovered_from_low_rank_plus_noise():
    b, a = factors_with_spectrum([10, 4, 2] + [1e-3] * 5)  # energy shares 0.83, 0.13, 0.03, ~0
    s = spectrum(b, a)
    assert (s.rank_at(0.90), s.rank_at(0.99), s.elbow) == (2, 3, 2)  # 0.03 < 1/8: below the elbow
    assert s.cumulative_pve[-1].item() == pytest.approx(1.0)
    assert s.rank_at(1.0) == 8
    assert spectrum(*factors_with_spectrum([5.0] * 6)).elbow == 6  # flat: no bend, every direction counts
    assert spectrum(*factors_with_spectrum([5.0] + [0.0] * 5)).elbow == 1


@pytest.mark.parametrize("true_rank", [1, 3, 6])
def test_exact_rank_is_recovered_from_a_dense_low_rank_plus_noise_matrix(true_rank):
    g = torch.Generator().manual_seed(true_rank)
    signal = torch.randn(64, true_rank, generator=g, dtype=torch.float64) @ torch.randn(
        true_rank, 48, generator=g, dtype=torch.float64
    )
    noise = 0.02 * torch.randn(64, 48, generator=g, dtype=torch.float64)
    s = dense_spectrum(signal + noise)
    assert s.elbow == true_rank and s.rank_at(0.99) == true_rank


def test_pve_and_effective_rank_follow_their_definitions():
    b, a = factors_with_spectrum([3.0, 4.0])
    s = spectrum(b, a)
    assert s.pve.tolist() == pytest.approx([16 / 25, 9 / 25])
    assert s.frobenius == pytest.approx(5.0)
    assert spectrum(*factors_with_spectrum([2.0] * 4)).effective_rank == pytest.approx(4.0)
    assert spectrum(*factors_with_spectrum([2.0] + [0.0] * 3)).effective_rank == pytest.approx(1.0)


def test_subspace_similarity_is_one_for_identical_and_zero_for_orthogonal():
    basis = orthonormal(32, 12, 3).T.float()
    assert torch.allclose(similarity_grid(basis[:4], basis[:4]).diagonal(), torch.ones(4, dtype=torch.float64))
    assert similarity_grid(basis[:4], basis[4:12]).abs().max() < 1e-12
    grid = similarity_grid(basis[:4] * 3, basis[:8])
    # The 4-dim span lies inside the 8-dim one: φ(i, 8) = 1 for every i.
    assert grid.shape == (4, 8) and torch.allclose(grid[:, 7], torch.ones(4, dtype=torch.float64))


def test_amplification_factor_matches_the_paper_formula():
    u, v = orthonormal(20, 2, 5), orthonormal(16, 2, 6)
    delta = u @ torch.diag(torch.tensor([6.0, 2.0], dtype=torch.float64)) @ v.T
    w = torch.randn(20, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    amp, projected = amplification_factor(u, v, float(torch.linalg.matrix_norm(delta)), w)
    assert projected == pytest.approx(float(torch.linalg.matrix_norm(u.T @ w @ v)))
    assert amp == pytest.approx(math.sqrt(40) / projected)


def saved_adapter(tmp_path, name="llama", r=6, **config):
    model = build(name)
    targets = {"llama": ["q_proj", "v_proj"], "gpt2": ["c_attn"], "bert": ["query", "value"]}[name]
    inject(model, LoraConfig(r=r, alpha=2 * r, target_modules=targets, **config))
    randomize_b(model, std=0.3)
    save_adapter(model, tmp_path)
    return model


def test_adapter_report_gives_ranks_and_amplification_against_the_base_folder(tmp_path):
    model = saved_adapter(tmp_path / "adapter", "bert")
    base = build("bert")
    base.bert.save_pretrained(tmp_path / "base")  # a base checkpoint without the task wrapper's prefix
    report = adapter_report(tmp_path / "adapter", base=tmp_path / "base")
    assert len(report.modules) == 4 and report.r == 6
    row = report.modules[0]
    layer = model.get_submodule(row.module)
    s = spectrum(layer.lora_B["default"].weight, layer.lora_A["default"].weight, layer.scaling["default"])
    amp, _ = amplification_factor(s.u, s.v, s.frobenius, layer.base_layer.weight)
    assert row.amplification == pytest.approx(amp) and row.ranks.p99 <= 6
    assert report.recommended.p95 == max(r.ranks.p95 for r in report.modules)
    assert report.mean.p95 == pytest.approx(sum(r.ranks.p95 for r in report.modules) / 4)
    written = report.as_json()  # report.json's layout
    assert written["summary"]["recommended_rank"]["95"] == report.recommended.p95
    assert (
        written["modules"][0]["rank_at_99"] == row.ranks.p99
        and written["modules"][0]["amplification"] == row.amplification
    )


def test_compression_error_equals_the_discarded_energy(tmp_path):
    saved_adapter(tmp_path / "adapter", "llama", r=6, use_rslora=True)
    source = read_adapter(tmp_path / "adapter")
    result = compress(source, rank=2)
    for path, old in source.modules.items():
        new = result.adapter.modules[path]
        assert new.rank == 2
        truth = torch.linalg.matrix_norm(old.delta() - new.delta()) / torch.linalg.matrix_norm(old.delta())
        s = spectrum(old.lora_b, old.lora_a, old.scale)
        discarded = math.sqrt(float((s.sigma[2:] ** 2).sum()) / s.energy)
        assert result.errors[path] == pytest.approx(discarded, rel=1e-5)
        assert float(truth) == pytest.approx(discarded, rel=1e-4)  # factors stored in float32


def test_compress_by_pve_keeps_that_share_and_loads_in_peft_like_in_lora_core(tmp_path):
    saved_adapter(tmp_path / "adapter", "gpt2", r=6)
    result = compress(tmp_path / "adapter", pve=0.9)
    for path, k in result.ranks.items():
        assert result.errors[path] ** 2 <= 0.1 + 1e-9
    result.adapter.save(tmp_path / "small")
    x = inputs("gpt2")
    ours = output(load_adapter(build("gpt2"), tmp_path / "small"), x)
    theirs = output(peft.PeftModel.from_pretrained(build("gpt2"), str(tmp_path / "small")).eval(), x)
    assert rel_diff(theirs, ours) <= 1e-5


def test_extract_recovers_a_known_rank_and_the_fine_tuned_outputs(tmp_path):
    base, tuned = build("llama"), build("llama")
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for layer in tuned.model.layers:
            for proj in (layer.self_attn.q_proj, layer.mlp.down_proj):
                d, k = proj.weight.shape
                proj.weight.add_(0.3 * torch.randn(d, 2, generator=g) @ torch.randn(2, k, generator=g))
    result, uncaptured = extract(base, tuned, pve=0.999)
    assert set(result.ranks.values()) == {2} and len(result.ranks) == 4 and uncaptured == []
    result.adapter.save(tmp_path / "extracted")
    x = inputs("llama")
    expected = output(tuned, x)
    assert rel_diff(output(load_adapter(build("llama"), tmp_path / "extracted"), x), expected) <= 1e-4
    theirs = peft.PeftModel.from_pretrained(build("llama"), str(tmp_path / "extracted")).eval()
    assert rel_diff(output(theirs, x), expected) <= 1e-4


def test_extract_from_conv1d_model_round_trips(tmp_path):
    base, tuned = build("gpt2"), build("gpt2")
    with torch.no_grad():
        tuned.transformer.h[0].attn.c_attn.weight.add_(torch.outer(torch.ones(32), torch.linspace(-1, 1, 96)) * 0.01)
    result, _ = extract(base, tuned, rank=1)
    assert list(result.ranks) == ["transformer.h.0.attn.c_attn"] and result.errors["transformer.h.0.attn.c_attn"] < 1e-6
    result.adapter.save(tmp_path / "x")
    x = inputs("gpt2")
    assert rel_diff(output(load_adapter(build("gpt2"), tmp_path / "x"), x), output(tuned, x)) <= 1e-5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank=0 must be at least 1"),
        ({"rank": 7}, "rank=7 is above the rank 6"),
        ({"pve": 0.0}, r"pve=0.0 must lie in \(0, 1\]"),
        ({"pve": 1.5}, r"pve=1.5 must lie in \(0, 1\]"),
        ({}, "exactly one of rank=K or pve=P"),
        ({"rank": 2, "pve": 0.9}, "exactly one"),
    ],
)
def test_compress_rejects_bad_ranks(tmp_path, kwargs, match):
    saved_adapter(tmp_path, "llama")
    with pytest.raises(LoraError, match=match):
        compress(tmp_path, **kwargs)


def test_mismatched_adapters_and_models_are_refused(tmp_path):
    saved_adapter(tmp_path / "llama", "llama")
    saved_adapter(tmp_path / "gpt2", "gpt2")
    with pytest.raises(AdapterMismatchError, match="share no module"):
        subspace_similarity(tmp_path / "llama", tmp_path / "gpt2")
    with pytest.raises(AdapterMismatchError, match="differ in architecture"):
        extract(build("llama"), build("gpt2"), rank=1)
    with pytest.raises(LoraError, match="nothing to extract"):
        extract(build("llama"), build("llama"), rank=1)


def test_similar_adapters_share_their_top_direction(tmp_path):
    """Two adapters trained toward the same rank-1 update: φ(1, 1) ≈ 1, the rest lower."""
    shared = orthonormal(32, 1, 11).T.float()
    for name, r, seed in (("small", 2, 1), ("large", 8, 2)):
        model = build("llama")
        inject(model, LoraConfig(r=r, alpha=r, target_modules=["q_proj"]))
        g = torch.Generator().manual_seed(seed)
        for layer in (model.model.layers[0].self_attn.q_proj, model.model.layers[1].self_attn.q_proj):
            a = torch.cat([shared * 5, 0.1 * torch.randn(r - 1, 32, generator=g)])
            layer.lora_A["default"].weight.data.copy_(a)
        save_adapter(model, tmp_path / name)
    grids = subspace_similarity(tmp_path / "small", tmp_path / "large")
    grid = next(iter(grids.values()))
    assert grid.shape == (2, 8) and grid[0, 0] > 0.99 and grid[1, 1] < 0.6  # (1 + small) / 2
    assert plot_similarity(grid, tmp_path / "phi.png").stat().st_size > 5000


def test_plots_are_written(tmp_path):
    saved_adapter(tmp_path / "adapter", "llama")
    report = adapter_report(tmp_path / "adapter")
    assert plot_scree(report, tmp_path / "scree.png").stat().st_size > 10000
    assert plot_ranks(report, tmp_path / "ranks.png").stat().st_size > 10000
