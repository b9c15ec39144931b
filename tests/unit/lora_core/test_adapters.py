"""Several named adapters on one base: switch, base-only, delete."""

import pytest
import torch
from conftest import build, inputs, output, randomize_b, rel_diff, targets

from lora_core import (
    LoraConfig,
    LoraError,
    MergeError,
    active_adapter,
    delete_adapter,
    inject,
    merge,
    set_active_adapter,
    unmerge,
)
from lora_core.injection import lora_layers
from lora_core.layer import LoraLayer


def two_adapters(name: str):
    model = build(name)
    base_out = output(model, inputs(name))
    inject(model, LoraConfig(r=4, alpha=8, target_modules=targets(name)), adapter_name="first")
    randomize_b(model, "first", seed=3, std=0.5)
    inject(model, LoraConfig(r=2, alpha=4, target_modules=targets(name)[-1:]), adapter_name="second")
    randomize_b(model, "second", seed=4, std=0.5)
    return model, base_out


def test_two_adapters_switch_and_each_gives_its_own_output(model_name):
    model, base_out = two_adapters(model_name)
    x = inputs(model_name)
    second = output(model, x)
    set_active_adapter(model, "first")
    first = output(model, x)
    set_active_adapter(model, None)
    assert rel_diff(output(model, x), base_out) <= 1e-6
    assert rel_diff(first, base_out) > 1e-3 and rel_diff(second, base_out) > 1e-3 and rel_diff(first, second) > 1e-3
    # Each adapter alone on a fresh base gives the same numbers: nothing leaks between them.
    solo = build(model_name)
    inject(solo, LoraConfig(r=4, alpha=8, target_modules=targets(model_name)), adapter_name="first")
    randomize_b(solo, "first", seed=3, std=0.5)
    assert rel_diff(output(solo, x), first) <= 1e-6


def test_second_adapter_is_added_to_the_same_layer_not_nested():
    model, _ = two_adapters("bert")
    value = model.bert.encoder.layer[0].attention.self.value
    assert isinstance(value, LoraLayer) and not isinstance(value.base_layer, LoraLayer)
    assert set(value.lora_A) == {"first", "second"}


def test_switching_does_not_copy_or_reload_base_weights():
    model, _ = two_adapters("llama")
    pointers = {n: p.data_ptr() for n, p in model.named_parameters() if "lora_" not in n}
    values = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    for name in ["first", None, "second", "first"]:
        set_active_adapter(model, name)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert p.data_ptr() == pointers[n] and torch.equal(p, values[n])


def test_only_the_active_adapter_trains():
    model, _ = two_adapters("mlp")
    set_active_adapter(model, "first")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".first." in n for n in trainable)


def test_switching_while_merged_is_refused():
    model, _ = two_adapters("mlp")
    merge(model)
    with pytest.raises(MergeError, match="unmerge"):
        set_active_adapter(model, "first")
    unmerge(model)
    set_active_adapter(model, "first")
    assert active_adapter(model) == "first"


def test_unknown_adapter_is_named():
    model, _ = two_adapters("mlp")
    with pytest.raises(LoraError, match=r"no adapter 'third'.*\['first', 'second'\]"):
        set_active_adapter(model, "third")


def test_delete_adapter_unwraps_layers_left_empty(model_name):
    model, base_out = two_adapters(model_name)
    x = inputs(model_name)
    delete_adapter(model, "second")
    set_active_adapter(model, "first")
    delete_adapter(model, "first")
    assert not lora_layers(model)
    assert rel_diff(output(model, x), base_out) <= 1e-6


def test_pissa_base_only_output_and_delete_restore_the_original_weights():
    model = build("llama")
    x = inputs("llama")
    w0 = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    base_out = output(model, x)
    inject(model, LoraConfig(r=4, alpha=8, target_modules=targets("llama"), init="pissa"))
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["default"].weight.mul_(1.5)  # training moved B away from its init
    set_active_adapter(model, None)
    assert rel_diff(output(model, x), base_out) <= 1e-5
    delete_adapter(model, "default")
    assert torch.allclose(model.model.layers[0].self_attn.q_proj.weight, w0, atol=1e-6)


def test_pissa_cannot_share_a_layer():
    model = inject(build("mlp"), LoraConfig(r=2, alpha=2, target_modules=["fc1"]))
    with pytest.raises(LoraError, match="PiSSA"):
        inject(model, LoraConfig(r=2, alpha=2, target_modules=["fc1"], init="pissa"), adapter_name="p")
