"""Merging: merged ≈ unmerged ≈ merge_and_unload, unmerge restores W0, refusals."""

import pytest
import torch
from conftest import build, inputs, output, randomize_b, rel_diff, targets
from torch import nn

from lora_core import LoraConfig, MergeError, inject, merge, merge_and_unload, unmerge
from lora_core.injection import lora_layers
from lora_core.layer import LoraLayer, ModulesToSave

# bf16 keeps 8 mantissa bits: rounding W0 + ΔW to bf16 moves logits by a few parts in 1e3
# relative to the largest logit on these tiny models; 3e-2 leaves room for accumulation.
BF16_TOLERANCE = 3e-2


@pytest.mark.parametrize("init", ["default", "pissa"])
def test_merge_matches_unmerged_logits(model_name, init):
    model = build(model_name)
    x = inputs(model_name)
    inject(model, LoraConfig(r=4, alpha=8, target_modules=targets(model_name), init=init))
    randomize_b(model)
    unmerged = output(model, x)
    merged = output(merge(model), x)
    unloaded = output(merge_and_unload(model), x)
    assert rel_diff(merged, unmerged) <= 1e-5
    assert rel_diff(unloaded, unmerged) <= 1e-5
    assert not any(isinstance(m, (LoraLayer, ModulesToSave)) for m in model.modules())


def test_merge_matches_unmerged_logits_in_bf16():
    model = build("llama").to(torch.bfloat16)
    x = inputs("llama")
    inject(model, LoraConfig(r=4, alpha=8, target_modules=targets("llama")))
    randomize_b(model)
    assert model.model.layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32
    unmerged = output(model, x)
    merged = output(merge(model), x)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert rel_diff(merged, unmerged) <= BF16_TOLERANCE


def test_unmerge_restores_base_weights(model_name):
    model = build(model_name)
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    inject(model, LoraConfig(r=4, alpha=8, target_modules=targets(model_name)))
    randomize_b(model, std=0.5)
    merge(model)
    for path, layer in lora_layers(model).items():
        assert not torch.equal(layer.base_layer.weight, original[path + ".weight"])
    unmerge(model)
    eps = torch.finfo(torch.float32).eps
    for path, layer in lora_layers(model).items():
        w0, delta = original[path + ".weight"], layer.delta_weight("default")
        # Two float32 roundings of numbers no larger than |W0| + |ΔW|.
        assert (layer.base_layer.weight - w0).abs().max() <= 2 * eps * (w0.abs().max() + delta.abs().max())


def test_merge_twice_is_refused():
    model = inject(build("mlp"), LoraConfig(r=2, alpha=2, target_modules=["fc1"]))
    merge(model)
    with pytest.raises(MergeError, match="already merged; unmerge"):
        merge(model)
    unmerge(model)
    with pytest.raises(MergeError, match="nothing is merged"):
        unmerge(model)


def test_layer_merge_and_unmerge_with_nothing_to_do_are_refused_and_write_nothing():
    layer = LoraLayer(nn.Linear(8, 8))
    layer.add_adapter("a", r=2, scaling=1.0, dropout=0.0, init="default")
    w0 = layer.weight.detach().clone()
    with pytest.raises(MergeError, match="no active adapter to merge"):
        layer.merge()
    with pytest.raises(MergeError, match="nothing is merged"):
        layer.unmerge()
    assert torch.equal(layer.weight, w0)
    assert layer.merged_adapter is None


def test_merge_with_nan_writes_nothing():
    model = inject(build("mlp"), LoraConfig(r=2, alpha=2, target_modules=["fc1", "fc2"]))
    randomize_b(model)
    before = {p: layer.base_layer.weight.clone() for p, layer in lora_layers(model).items()}
    with torch.no_grad():
        model.fc2.lora_B["default"].weight[0, 0] = float("nan")
    with pytest.raises(MergeError, match="NaN/Inf"):
        merge(model)
    for path, layer in lora_layers(model).items():
        assert torch.allclose(layer.base_layer.weight, before[path], atol=1e-6)
        assert layer.merged_adapter is None


def test_merge_computes_the_delta_in_float32():
    # In bf16, W0 + ΔW with a tiny ΔW would round ΔW away before it could be added exactly;
    # the merged weight must be the float32 sum rounded once.
    torch.manual_seed(0)
    base = nn.Linear(16, 16).to(torch.bfloat16)
    w0 = base.weight.detach().float().clone()
    layer = LoraLayer(base)
    layer.add_adapter("a", r=2, scaling=1.0, dropout=0.0, init="default")
    nn.init.normal_(layer.lora_B["a"].weight, std=0.1)
    layer.active_adapter = "a"
    expected = (w0 + layer.delta_weight("a")).to(torch.bfloat16)
    layer.merge()
    assert torch.equal(layer.base_layer.weight, expected)
