"""training.selection: which weights a run keeps from its validation passes (best, smoothed, average), that the
average is a plain adapter that merges exactly, and that a resumed run keeps the same weights."""

import pytest
import torch
from conftest import build, inputs, output, rel_diff
from tasks import data_slice, tiny_base, write_task

from lora_core import LoraConfig, inject, load_adapter, merge, save_adapter
from pipelines import steps
from pipelines.errors import SpecError
from pipelines.models import load_model
from pipelines.results import ValidationPass
from pipelines.selection import Validation
from pipelines.task_files import load_spec
from pipelines.tracking import flatten
from pipelines.train import Position, train

STEPS, EVERY = 12, 2


def tiny_adapted(seed: int = 0) -> torch.nn.Module:
    model = build("bert", seed)
    inject(
        model,
        LoraConfig(
            r=4, alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS"
        ),
    )
    return model


def batches(epoch: int):
    g = torch.Generator().manual_seed(epoch)
    for _ in range(4):
        yield {"input_ids": torch.randint(1, 64, (8, 9), generator=g), "labels": torch.randint(0, 3, (8,), generator=g)}


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def observed(model: torch.nn.Module, selection: str, scripted: list[float] | None = None):
    """A Validation whose passes record the weights they saw: scripted accuracies, or the loss on one held-out batch."""
    held_out = next(batches(99))
    seen: dict[int, dict[str, torch.Tensor]] = {}

    def run() -> dict[str, float]:
        seen[len(seen) + 1] = trainable(model)
        if scripted:
            return {"accuracy": scripted[len(seen) - 1], "loss": 1.0}
        with torch.no_grad():
            return {"loss": model(**held_out).loss.item()}

    metric = "accuracy" if scripted else "loss"
    return Validation(run=run, every=EVERY, metric=metric, selection=selection), seen


def test_the_average_is_the_mean_of_the_weights_at_the_passes_of_the_second_half():
    model = tiny_adapted()
    validation, seen = observed(model, "average")
    done = train(model, batches, steps=STEPS, lr=2e-2, device="cpu", validation=validation)
    assert done.averaged_steps == [8, 10, 12]  # passes after step 6 of 12
    assert done.best_step is None and len(seen) == 7  # six passes, and one of the average at the end
    late = [seen[step // EVERY] for step in done.averaged_steps]
    held = trainable(model)
    for name, value in held.items():
        torch.testing.assert_close(value, torch.stack([w[name] for w in late]).mean(0), rtol=1e-6, atol=1e-7)
    assert sum(not torch.equal(v, late[-1][n]) for n, v in held.items()) == len(held)  # not the last pass
    assert done.averaged["loss"] == pytest.approx(validation.run()["loss"])  # its metrics are the held weights'


def test_without_a_split_the_average_takes_the_same_steps_unmeasured_and_a_choice_by_metric_is_refused():
    measured, seen = observed(tiny_adapted(), "average")
    model = tiny_adapted()
    train(model, batches, steps=STEPS, lr=2e-2, device="cpu", validation=measured)
    blind = tiny_adapted()
    done = train(
        blind, batches, steps=STEPS, lr=2e-2, device="cpu", validation=Validation(None, EVERY, selection="average")
    )
    assert done.averaged_steps == [8, 10, 12] and done.evaluations == [] and done.averaged is None
    for name, value in trainable(blind).items():  # measuring changes nothing but the numbers reported
        torch.testing.assert_close(value, trainable(model)[name], rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs a run"):
        Validation(None, EVERY, selection="best")


def test_the_averaged_adapter_saves_at_its_rank_and_merges_to_the_unmerged_logits(tmp_path):
    model = tiny_adapted()
    validation, _ = observed(model, "average")
    train(model, batches, steps=STEPS, lr=2e-2, device="cpu", validation=validation)
    save_adapter(model, tmp_path / "adapter")
    fresh = build("bert")
    load_adapter(fresh, tmp_path / "adapter")
    x = inputs("bert")
    unmerged = output(fresh, x)
    torch.testing.assert_close(unmerged, output(model, x))
    assert all(p.shape[0] == 4 for n, p in fresh.named_parameters() if ".lora_A." in n)  # rank 4, as trained
    merge(fresh)
    assert rel_diff(output(fresh, x), unmerged) < 1e-5


def test_smoothed_keeps_the_pass_best_over_three_and_best_keeps_the_lucky_one():
    accuracies = [0.9, 0.5, 0.6, 0.8, 0.8, 0.85]  # a lucky first pass, then a better plateau
    kept = {}
    for selection in ("best", "smoothed"):
        model = tiny_adapted()
        validation, seen = observed(model, selection, accuracies)
        done = train(model, batches, steps=STEPS, lr=2e-2, device="cpu", validation=validation)
        assert all(torch.equal(v, seen[done.best_step // EVERY][n]) for n, v in trainable(model).items())
        kept[selection] = done.best_step
    assert kept == {"best": 2, "smoothed": 12}  # window means .67, .63, .73, .82 end at steps 6, 8, 10, 12
    by_window = Validation(run=dict, every=1, metric="accuracy", selection="smoothed")
    passes = [ValidationPass(step=i, metrics={"accuracy": a, "loss": 1.0}) for i, a in enumerate(accuracies)]
    assert by_window.standing(passes, 1) is None and by_window.standing(passes, 2)["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("selection", ["average", "smoothed"])
def test_a_resumed_run_keeps_the_same_weights_as_an_uninterrupted_one(tmp_path, selection):
    model = tiny_adapted()
    validation, _ = observed(model, selection)
    train(model, batches, steps=STEPS, lr=2e-2, device="cpu", validation=validation)
    reference = trainable(model)

    def stop_at_10(step, loss, lr):
        if step == 10:
            raise KeyboardInterrupt  # after the checkpoint at step 8, which holds pass 8 of the average

    checkpoint = tmp_path / "checkpoint"
    interrupted = tiny_adapted()
    validation, _ = observed(interrupted, selection)
    with pytest.raises(KeyboardInterrupt):
        train(
            interrupted,
            batches,
            STEPS,
            2e-2,
            device="cpu",
            checkpoint_dir=checkpoint,
            checkpoint_every=4,
            on_step=stop_at_10,
            validation=validation,
        )
    assert (checkpoint / ("average.safetensors" if selection == "average" else "best.safetensors")).exists()
    resumed = tiny_adapted()  # the same frozen base, other trainable weights: those come from the checkpoint
    with torch.no_grad():
        for p in resumed.parameters():
            if p.requires_grad:
                p.normal_(generator=torch.Generator().manual_seed(5))
    validation, _ = observed(resumed, selection)
    done = train(
        resumed,
        batches,
        STEPS,
        2e-2,
        device="cpu",
        checkpoint_dir=checkpoint,
        checkpoint_every=4,
        validation=validation,
    )
    assert done.averaged_steps == ([8, 10, 12] if selection == "average" else [])
    assert all(torch.equal(reference[n], v) for n, v in trainable(resumed).items())


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("bert"))


def trained_with_average(tmp_path, base, validation_fraction: float):
    """(spec, prepared, result) of a tiny task trained 8 steps, its weights averaged every 2."""
    path = write_task(
        tmp_path,
        "avg",
        base,
        data_slice(tmp_path, 120),
        data__validation_fraction=validation_fraction,
        training__max_steps=8,
        training__eval_every=2,
        training__selection="average",
    )
    spec = load_spec(path)
    prepared = steps.prepare_data(spec, tmp_path / "work")
    return spec, prepared, steps.fit_adapter(spec, prepared, base, tmp_path / "run")


def test_a_task_trained_with_average_saves_the_mean_and_reports_its_validation(bert_base, tmp_path):
    spec, prepared, result = trained_with_average(tmp_path, bert_base, 0.2)
    assert flatten(spec.model_dump(mode="json", exclude={"source"}))["training.selection"] == "average"  # on the run
    assert result.averaged_steps == [6, 8] and result.best_step == 8
    torch.manual_seed(spec.training.seed)
    model, tokenizer = load_model(bert_base, "classification", prepared.labels)
    load_adapter(model, result.adapter)
    again = steps.measure(spec, prepared, steps.read_split(prepared, "validation"), model, tokenizer)[1]
    assert again["loss"] == pytest.approx(result.best_validation.metrics["loss"], abs=1e-5)


def test_a_task_without_a_validation_split_trains_on_all_its_data_and_still_averages(bert_base, tmp_path):
    _, prepared, result = trained_with_average(tmp_path, bert_base, 0)
    assert prepared.validation == 0 and result.best_validation is None
    assert result.averaged_steps == [6, 8] and result.best_step == 8


def test_average_with_patience_is_refused_in_one_line(tmp_path):
    path = write_task(
        tmp_path,
        "p",
        tmp_path,
        tmp_path / "d.jsonl",
        data__validation_fraction=0.2,
        training__selection="average",
        training__patience=2,
    )
    with pytest.raises(SpecError, match=r"\(top level\): training.patience stops at the best pass.*remove patience"):
        load_spec(path)
    assert load_spec(write_task(tmp_path, "q", tmp_path, tmp_path / "d.jsonl")).training.selection == "average"
    patient = write_task(
        tmp_path, "r", tmp_path, tmp_path / "d.jsonl", data__validation_fraction=0.2, training__patience=2
    )
    assert load_spec(patient).training.selection == "best"  # patience stops at a pass: that pass is kept


def test_a_checkpoint_written_before_typed_passes_still_resumes():
    """state.json once stored each pass flat, {step, <metric>: value}; a run stopped then resumes after an upgrade."""
    old = '{"epoch": 1, "batch": 3, "losses": [0.5], "best_step": 4, "schedule_step": 6, '
    old += '"evaluations": [{"step": 4, "accuracy": 0.75, "loss": 0.5}]}'
    position = Position.model_validate_json(old)
    assert position.evaluations == [ValidationPass(step=4, metrics={"accuracy": 0.75, "loss": 0.5})]
    assert Position.model_validate_json(position.model_dump_json()) == position
