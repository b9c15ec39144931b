"""promotion.rank: the analysis picks the rank, the gate decides whether the compressed adapter ships."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from tasks import data_slice, tiny_base, write_task

from lora_core.analysis import read_adapter
from pipelines import steps
from pipelines.adapter_files import LABELS_FILE
from pipelines.errors import SpecError
from pipelines.ranking import choose_rank, uniform_rank
from pipelines.results import Evaluation
from pipelines.task_files import load_spec

A = "lora_A.weight"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real r=8 adapter on a one-layer MiniLM (60 steps), its spec and prepared data."""
    tmp = tmp_path_factory.mktemp("ranking")
    base = tiny_base(tmp / "bert")
    path = write_task(
        tmp,
        "ranked",
        base,
        data_slice(tmp),
        lora={"r": 8, "alpha": 16, "target_modules": ["query", "value"]},
        training__max_steps=60,
        training__lr=1e-2,
        gate={"metric": "accuracy", "min_gain_over_base": -1.0},
        data__validation_fraction=0.1,
        promotion={"rank": "auto"},
    )
    spec = load_spec(path)
    prepared = steps.prepare_data(spec, tmp / "work")
    result = steps.fit_adapter(spec, prepared, base, tmp / "run")
    return spec, prepared, base, result.adapter


def planted_rank_two(adapter: str, out) -> str:
    """The adapter with each update replaced by its top two singular directions at equal strength (B[:, :2] and
    A[:2] from the SVD of B·A, the other ranks zero): ΔW = s·B·A has rank exactly 2, and both ranks matter."""
    import shutil

    shutil.copytree(adapter, out)
    tensors = load_file(f"{out}/adapter_model.safetensors")
    for key in [k for k in tensors if k.endswith(A)]:
        a, b = tensors[key], tensors[key.replace("lora_A", "lora_B")]
        u, s, vt = torch.linalg.svd(b.double() @ a.double(), full_matrices=False)
        strength = s[:2].mean().sqrt()
        tensors[key] = torch.zeros_like(a)
        tensors[key][:2] = (strength * vt[:2]).to(a.dtype)
        b_new = torch.zeros_like(b)
        b_new[:, :2] = (strength * u[:, :2]).to(b.dtype)
        tensors[key.replace("lora_A", "lora_B")] = b_new
    save_file(tensors, f"{out}/adapter_model.safetensors", metadata={"format": "pt"})
    return str(out)


def test_auto_rank_ships_the_rank_the_update_really_has(trained, tmp_path):
    spec, prepared, base, adapter = trained
    planted = planted_rank_two(adapter, tmp_path / "planted")
    assert uniform_rank(read_adapter(planted), 0.95) == 2 and uniform_rank(read_adapter(adapter), 0.999) > 2
    evaluation = steps.evaluate_adapter(spec, prepared, base, planted, None)
    ranking = choose_rank(spec, prepared, base, planted, evaluation, None, tmp_path / "ranked")
    assert ranking.shipped and (ranking.trained_rank, ranking.rank) == (8, 2)
    assert read_adapter(ranking.adapter).config.r == 2
    assert ranking.metric_delta == pytest.approx(0.0, abs=1e-9)  # the same ΔW: the same predictions
    assert ranking.bytes_saved > 0 and ranking.evaluation.passed
    assert "passes the gate" in ranking.reason
    assert (tmp_path / "ranked" / LABELS_FILE).exists()  # predictions still name the classes


def test_a_compressed_adapter_that_scores_worse_is_not_shipped(trained, tmp_path):
    spec, prepared, base, adapter = trained
    strict = spec.model_copy(update={"promotion": spec.promotion.model_copy(update={"rank": 1, "rank_tolerance": 0.0})})
    evaluation = steps.evaluate_adapter(strict, prepared, base, adapter, None)
    ranking = choose_rank(strict, prepared, base, adapter, evaluation, None, tmp_path / "ranked")
    assert ranking.metric_delta < 0, "r=1 kept every prediction; the test needs an adapter it hurts"
    assert not ranking.shipped and ranking.adapter == adapter and ranking.rank == 8
    assert ranking.evaluation is evaluation and "beyond promotion.rank_tolerance 0" in ranking.reason


def test_an_adapter_already_at_its_rank_ships_as_trained(trained, tmp_path):
    spec, prepared, base, adapter = trained
    full = spec.model_copy(update={"promotion": spec.promotion.model_copy(update={"rank_pve": 1.0})})
    rank = uniform_rank(read_adapter(adapter), 1.0)
    evaluation = Evaluation(base={}, adapter={}, merged={}, production=None, merge_gap=0.0, passed=True, reasons=[])
    ranking = choose_rank(full, prepared, base, adapter, evaluation, None, tmp_path / "ranked")
    assert rank == 8 and not ranking.shipped and "nothing to cut" in ranking.reason
    assert not (tmp_path / "ranked").exists()


@pytest.mark.parametrize(
    "promotion, message",
    [
        ({"rank": 0}, "promotion.rank 0 must be a positive integer"),
        ({"rank": 4}, "promotion.rank 4 is not below lora.r 4"),
        ({"rank": "half"}, "promotion.rank"),
        ({"rank": "auto", "rank_pve": 0}, "promotion.rank_pve: Input should be greater than 0"),
        ({"rank": "auto", "rank_pve": 1.5}, "promotion.rank_pve: Input should be less than or equal to 1"),
        (
            {"rank": "auto", "rank_tolerance": -0.1},
            "promotion.rank_tolerance: Input should be greater than or equal to 0",
        ),
        ({"rank_pve": 0.9}, "promotion.rank_pve and rank_tolerance apply with promotion.rank"),
    ],
)
def test_bad_rank_settings_are_one_line_naming_the_fix(tmp_path, promotion, message):
    path = write_task(tmp_path, "bad", tmp_path, tmp_path / "d.jsonl", promotion={"mode": "adapter", **promotion})
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        load_spec(path)
