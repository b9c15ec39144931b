"""Defaults chosen for the user and validation-driven training: targets by architecture, the head always trained,
the best validation pass is what is saved, early stopping stops, LoRA+ and gradient checkpointing."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from tasks import data_slice, tiny_base, write_task
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from lora_core import LoraConfig, inject, save_adapter
from lora_core.injection import lora_layers
from pipelines import steps
from pipelines.device import autocast
from pipelines.models import head_modules, load_model
from pipelines.task_files import load_spec
from pipelines.train import adamw, param_groups, train


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("bert"))


def tiny_bert() -> BertForSequenceClassification:
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=64,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            num_labels=3,
        )
    )


def test_targets_default_to_every_attention_and_mlp_projection_never_the_head():
    model = inject(tiny_bert(), LoraConfig(modules_to_save=["classifier"]))
    leaves = {path.removeprefix("bert.") for path in lora_layers(model)}
    per_layer = {
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    }
    assert leaves == {f"encoder.layer.{i}.{p}" for i in range(2) for p in per_layer} | {"pooler.dense"}
    gpt2 = inject(GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4)), LoraConfig())
    assert {p.rsplit(".", 1)[-1] for p in lora_layers(gpt2)} == {"c_attn", "c_proj", "c_fc"}  # not lm_head


def test_a_defaulted_adapter_names_its_modules_on_disk(tmp_path):
    model = inject(tiny_bert(), LoraConfig(modules_to_save=["classifier"]))
    save_adapter(model, tmp_path)
    written = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert written == sorted(lora_layers(model)) and not any("classifier" in t for t in written)


def test_the_head_is_always_trained_and_saved(bert_base, tmp_path):
    """modules_to_save left empty: the classification head is added anyway, trains, and is in the saved adapter."""
    path = write_task(
        tmp_path, "head", bert_base, data_slice(tmp_path, 120), lora__modules_to_save=[], training__max_steps=6
    )
    spec = load_spec(path)
    model, _ = load_model(bert_base, "classification", ["a", "b"])
    assert head_modules(model) == ["classifier"]
    assert steps.task_lora(spec, model).modules_to_save == ["classifier"]
    prepared = steps.prepare_data(spec, tmp_path / "work")
    result = steps.fit_adapter(spec, prepared, bert_base, tmp_path / "run")
    saved = load_file(f"{result.adapter}/adapter_model.safetensors")
    head = {k: v for k, v in saved.items() if ".classifier." in k}
    assert {k.rsplit(".", 1)[-1] for k in head} == {"weight", "bias"}
    torch.manual_seed(spec.training.seed)  # the untrained head: the same seed draws the same init
    fresh, _ = load_model(bert_base, "classification", prepared.labels)
    trained = next(v for k, v in head.items() if k.endswith("weight"))
    assert not torch.allclose(trained, fresh.classifier.weight)
    merged = steps.merge_model(spec, prepared, bert_base, result.adapter, tmp_path / "merged")
    assert torch.equal(
        load_file(f"{merged}/model.safetensors")["classifier.weight"], trained
    )  # and in the merged model


def test_the_best_validation_pass_is_the_adapter_saved(bert_base, tmp_path):
    path = write_task(
        tmp_path,
        "best",
        bert_base,
        data_slice(tmp_path, 160),
        data__validation_fraction=0.1,
        training__max_steps=16,
        training__eval_every=2,
        training__lr=1.0,  # a rate high enough that later passes get worse
        training__best_metric="loss",
        training__selection="best",
    )
    spec = load_spec(path)
    prepared = steps.prepare_data(spec, tmp_path / "work")
    assert prepared.validation > 0
    seen = []
    result = steps.fit_adapter(
        spec, prepared, bert_base, tmp_path / "run", on_validation=lambda s, m: seen.append((s, m))
    )
    assert [s for s, _ in seen] == list(range(2, 17, 2))
    best_step, best = min(seen, key=lambda s_m: s_m[1]["loss"])
    assert result.best_step == best_step and result.best_validation.metrics["loss"] == best["loss"]
    assert best_step < 16, "the run should have overshot; pick a higher lr for this test"
    # the saved adapter, reloaded, scores the best pass's validation loss, not the last one's
    torch.manual_seed(spec.training.seed)
    model, tokenizer = load_model(bert_base, "classification", prepared.labels)
    from lora_core import load_adapter

    load_adapter(model, result.adapter)
    again = steps.measure(spec, prepared, steps.read_split(prepared, "validation"), model, tokenizer)[1]
    assert again["loss"] == pytest.approx(best["loss"], abs=1e-5)
    assert again["loss"] < seen[-1][1]["loss"]


def test_early_stopping_stops_after_patience_passes_without_improvement(bert_base, tmp_path):
    path = write_task(
        tmp_path,
        "stop",
        bert_base,
        data_slice(tmp_path, 160),
        data__validation_fraction=0.2,
        training__max_steps=200,
        training__eval_every=2,
        training__patience=2,
        training__lr=0.3,
        training__best_metric="loss",
    )
    spec = load_spec(path)
    prepared = steps.prepare_data(spec, tmp_path / "work")
    result = steps.fit_adapter(spec, prepared, bert_base, tmp_path / "run")
    assert result.stopped_early and result.planned_steps == 200
    assert result.steps == result.best_step + 2 * 2  # two passes, two steps apart, after the best


def test_the_best_pass_is_chosen_on_the_gate_metric_and_a_tie_goes_to_the_lower_loss(tmp_path):
    from pipelines.train import Validation

    by_accuracy = Validation(run=dict, every=1, metric="accuracy")
    assert by_accuracy.better({"accuracy": 0.9, "loss": 0.5}, {"accuracy": 0.8, "loss": 0.3})
    assert by_accuracy.better({"accuracy": 0.8, "loss": 0.2}, {"accuracy": 0.8, "loss": 0.3})
    assert not by_accuracy.better({"accuracy": 0.8, "loss": 0.3}, {"accuracy": 0.8, "loss": 0.3})
    assert Validation(run=dict, every=1, metric="perplexity").better({"perplexity": 3.0}, {"perplexity": 4.0})
    spec = load_spec(write_task(tmp_path, "m", tmp_path, tmp_path / "d.jsonl", gate={"metric": "macro_f1"}))
    assert spec.training.best_metric is None and spec.gate.metric == "macro_f1"  # train_adapter picks on macro_f1


def test_lora_plus_gives_b_its_own_learning_rate():
    model = inject(tiny_bert(), LoraConfig(r=4, modules_to_save=["classifier"]))
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    rest, b = param_groups(named, 1e-3, 16)
    assert b["lr"] == pytest.approx(1.6e-2) and rest["lr"] == 1e-3
    assert {id(p) for p in b["params"]} == {id(p) for n, p in named.items() if ".lora_B." in n}
    assert len(rest["params"]) + len(b["params"]) == len(named)
    assert len(param_groups(named, 1e-3, 1.0)) == 2  # same groups; ratio 1 is plain LoRA


def test_the_cpu_update_is_fused_and_is_the_unfused_adamw_step_up_to_rounding():
    model = inject(tiny_bert(), LoraConfig(r=4, modules_to_save=["classifier"])).eval()  # no dropout: same losses
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in named.items()}
    batch = {"input_ids": torch.randint(5, 60, (4, 12)), "labels": torch.tensor([0, 1, 0, 1])}

    def three_steps(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            for n, p in named.items():
                p.copy_(start[n])
        for _ in range(3):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return {n: p.detach().clone() for n, p in named.items()}

    fused = adamw(named, 1e-2, 4.0, 0.01)
    assert fused.defaults["fused"] is True
    ours = three_steps(fused)
    plain = three_steps(torch.optim.AdamW(param_groups(named, 1e-2, 4.0), weight_decay=0.01))
    for n in named:
        assert not torch.equal(ours[n], start[n]), n  # every tensor moved (B from zero), by the same update
        torch.testing.assert_close(ours[n], plain[n], rtol=0, atol=1e-5)  # a thousandth of one step (lr 1e-2)


def test_gradient_checkpointing_trains_the_same_adapter(bert_base, tmp_path):
    adapters = []
    for flag in (False, True):
        path = write_task(
            tmp_path,
            f"gc-{flag}".lower(),
            bert_base,
            data_slice(tmp_path, 120),
            training__max_steps=5,
            training__gradient_checkpointing=flag,
        )
        spec = load_spec(path)
        prepared = steps.prepare_data(spec, tmp_path / "work")
        result = steps.fit_adapter(spec, prepared, bert_base, tmp_path / f"run-{flag}")
        adapters.append(load_file(f"{result.adapter}/adapter_model.safetensors"))
    assert adapters[0].keys() == adapters[1].keys()
    for key in adapters[0]:
        torch.testing.assert_close(adapters[0][key], adapters[1][key], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("native", "bf16", "expected"),
    [(True, True, True), (True, False, False), (False, True, False)],
    ids=["native-bf16-cpu", "bf16-off", "no-native-bf16"],
)
def test_training_on_a_cpu_autocasts_to_bf16_only_where_the_cpu_has_it(monkeypatch, native, bf16, expected):
    monkeypatch.setattr("pipelines.device.cpu_bf16", lambda: native)
    torch.manual_seed(0)
    model = inject(tiny_bert(), LoraConfig(r=4, modules_to_save=["classifier"]))
    seen = []
    model.bert.encoder.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    batch = {"input_ids": torch.randint(0, 64, (4, 8)), "labels": torch.tensor([0, 1, 2, 0])}
    train(model, lambda epoch: [dict(batch)], steps=2, lr=1e-3, device="cpu", bf16=bf16)
    assert seen == [expected, expected]
    with autocast(torch.device("cpu"), bf16):  # evaluation stays float32 on a CPU
        assert not torch.is_autocast_enabled("cpu")


def test_cpu_bf16_training_caps_onednn_primitive_cache_unless_the_user_set_it(monkeypatch):
    monkeypatch.setattr("pipelines.device.cpu_bf16", lambda: True)
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    autocast(torch.device("cpu"))  # evaluation: no bf16, nothing set
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    autocast(torch.device("cpu"), training=True)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    autocast(torch.device("cpu"), training=True)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"
