"""Injection: outputs at init, what trains, parameter counts, target matching and config errors."""

import math

import pytest
import torch
from conftest import build, inputs, output, randomize_b, rel_diff, targets
from pydantic import ValidationError
from torch import nn

from lora_core import LoraConfig, LoraError, TargetError, count_parameters, inject
from lora_core.injection import lora_layers
from lora_core.layer import LoraLayer


@pytest.mark.parametrize("init", ["default", "gaussian", "pissa"])
def test_output_at_init_equals_base(model_name, init):
    model = build(model_name)
    x = inputs(model_name)
    before = output(model, x)
    inject(model, LoraConfig(r=4, alpha=8, target_modules=targets(model_name), init=init))
    assert rel_diff(output(model, x), before) <= 1e-5


def test_only_adapter_parameters_get_gradients(model_name):
    model = build(model_name)
    inject(model, LoraConfig(r=4, alpha=8, target_modules=targets(model_name)))
    randomize_b(model)
    model.train()
    out = model(inputs(model_name))
    (out if isinstance(out, torch.Tensor) else out.logits).square().mean().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(".lora_A." in n or ".lora_B." in n for n in with_grad)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n in dict(model.named_parameters()) if ".lora_A." in n or ".lora_B." in n
    }


def test_count_parameters_matches_analytic_sum(model_name):
    model = build(model_name)
    total_before = sum(p.numel() for p in model.parameters())
    r = 4
    inject(model, LoraConfig(r=r, alpha=8, target_modules=targets(model_name)))
    analytic = sum(r * (layer.in_features + layer.out_features) for layer in lora_layers(model).values())
    trainable, total = count_parameters(model)
    assert trainable == analytic > 0
    assert total == total_before + analytic


def test_modules_to_save_train_in_full_and_keep_the_original():
    model = build("bert")
    head_before = model.classifier.weight.clone()
    inject(model, LoraConfig(r=4, alpha=8, target_modules=["query"], modules_to_save=["classifier"]))
    trainable, _ = count_parameters(model)
    head = model.classifier.modules_to_save["default"]
    lora = sum(4 * (layer.in_features + layer.out_features) for layer in lora_layers(model).values())
    assert trainable == lora + head.weight.numel() + head.bias.numel()
    assert head.weight.requires_grad and not model.classifier.original_module.weight.requires_grad
    with torch.no_grad():
        head.weight.add_(1.0)
    assert torch.equal(model.classifier.original_module.weight, head_before)


def test_rslora_scales_by_alpha_over_sqrt_r():
    model = build("mlp")
    inject(model, LoraConfig(r=4, alpha=8, target_modules=["fc1"], use_rslora=True))
    assert model.fc1.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    plain = inject(build("mlp"), LoraConfig(r=4, alpha=8, target_modules=["fc1"]))
    assert plain.fc1.scaling["default"] == pytest.approx(8 / 4)


def test_rank_and_alpha_patterns_override_per_module():
    model = inject(
        build("mlp"),
        LoraConfig(r=4, alpha=8, target_modules=["fc1", "fc2"], rank_pattern={"fc2": 2}, alpha_pattern={"fc2": 1.0}),
    )
    assert model.fc1.lora_A["default"].weight.shape == (4, 12)
    assert model.fc2.lora_A["default"].weight.shape == (2, 24)
    assert model.fc2.scaling["default"] == pytest.approx(0.5)


def test_gaussian_init_draws_a_with_std_one_over_r():
    torch.manual_seed(0)
    layer = LoraLayer(nn.Linear(4096, 64))
    layer.add_adapter("g", r=16, scaling=1.0, dropout=0.0, init="gaussian")
    assert layer.lora_A["g"].weight.std().item() == pytest.approx(1 / 16, rel=0.02)
    assert torch.count_nonzero(layer.lora_B["g"].weight) == 0


def test_pissa_factors_are_the_top_r_svd_and_the_residual_is_the_rest():
    torch.manual_seed(0)
    base = nn.Linear(20, 30)
    w0 = base.weight.detach().clone()
    layer = LoraLayer(base)
    layer.add_adapter("p", r=5, scaling=2.0, dropout=0.0, init="pissa")
    top = layer.delta_weight("p")
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    assert torch.allclose(top, u[:, :5] @ torch.diag(s[:5]) @ vh[:5], atol=1e-5)
    assert torch.allclose(base.weight + top, w0, atol=1e-5)
    # The residual holds exactly the discarded singular values.
    assert torch.allclose(torch.linalg.svdvals(base.weight)[:15], s[5:], atol=1e-5)


def test_conv1d_weight_is_treated_as_transposed():
    model = build("gpt2")
    inject(model, LoraConfig(r=2, alpha=2, target_modules=["c_attn"]))
    layer = model.transformer.h[0].attn.c_attn
    assert (layer.in_features, layer.out_features) == (32, 96)
    assert layer.lora_A["default"].weight.shape == (2, 32) and layer.lora_B["default"].weight.shape == (96, 2)
    randomize_b(model)
    x = torch.randn(3, 32)
    expected = x @ layer.base_layer.weight + layer.base_layer.bias + x @ layer.delta_weight("default")
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_all_linear_wraps_every_linear_but_the_output_head():
    model = inject(build("llama"), LoraConfig(r=2, alpha=2, target_modules="all-linear"))
    wrapped = set(lora_layers(model))
    assert "lm_head" not in wrapped and not isinstance(model.lm_head, LoraLayer)
    assert len(wrapped) == 2 * 7  # q, k, v, o, gate, up, down per layer


def test_regex_targets_match_the_whole_path():
    model = inject(build("bert"), LoraConfig(r=2, alpha=2, target_modules=r".*layer\.1\.attention\.self\.(query|key)"))
    assert set(lora_layers(model)) == {
        "bert.encoder.layer.1.attention.self.query",
        "bert.encoder.layer.1.attention.self.key",
    }


def test_unknown_target_names_close_modules():
    with pytest.raises(TargetError, match=r"matched no module.*'query'"):
        inject(build("bert"), LoraConfig(r=2, alpha=2, target_modules=["qurey"]))


def test_non_linear_target_is_refused():
    with pytest.raises(TargetError, match="BertSelfAttention"):
        inject(build("bert"), LoraConfig(r=2, alpha=2, target_modules=["self"]))


def test_rank_above_min_dimension_is_refused_and_model_untouched():
    model = build("mlp")
    with pytest.raises(LoraError, match=r"r=13 exceeds min\(out, in\)=12 of 'fc1'"):
        inject(model, LoraConfig(r=13, alpha=2, target_modules=["fc1"]))
    assert not lora_layers(model)


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"r": 0}, "r=0: the rank must be a positive integer"),
        ({"r": -3}, "r=-3"),
        ({"alpha": 0}, "alpha=0.0: alpha must be a positive number"),
        ({"alpha": -1}, "alpha=-1.0"),
        ({"dropout": 1.0}, "less than 1"),
        ({"target_modules": []}, "target_modules is empty"),
        ({"target_modules": "(["}, "not a valid regex"),
        ({"rank_pattern": {"fc1": 0}}, r"rank_pattern\['fc1'\]=0"),
    ],
)
def test_bad_config_gives_a_clear_error(bad, match):
    with pytest.raises(ValidationError, match=match):
        LoraConfig(**({"r": 4, "alpha": 8, "target_modules": ["fc1"]} | bad))


def test_adapter_name_must_be_new_and_plain():
    model = inject(build("mlp"), LoraConfig(r=2, alpha=2, target_modules=["fc1"]))
    with pytest.raises(LoraError, match="already in this model"):
        inject(model, LoraConfig(r=2, alpha=2, target_modules=["fc1"]))
    with pytest.raises(LoraError, match="must be letters"):
        inject(model, LoraConfig(r=2, alpha=2, target_modules=["fc1"]), adapter_name="a.b")


def test_under_cpu_bf16_autocast_the_update_and_its_sum_stay_float32():
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    model = inject(nn.Sequential(base), LoraConfig(r=4, alpha=8, target_modules=["0"]))
    layer = lora_layers(model)["0"]
    nn.init.normal_(layer.lora_B["default"].weight)
    a, b = layer.factors("default")
    x = torch.randn(5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        base_out = layer.base_layer(x)
    assert base_out.dtype == torch.bfloat16 and out.dtype == torch.float32
    update = 2.0 * (x @ a.T @ b.T)  # s = alpha / r = 2, computed in float32
    torch.testing.assert_close(out, base_out.float() + update, atol=1e-6, rtol=1e-6)
    # the factors' gradients are float32 and do not depend on the base's precision
    grad = torch.randn(5, 8)
    out.backward(grad)
    under_autocast = [p.grad.clone() for p in (a, b)]
    a.grad = b.grad = None
    model(x).backward(grad)
    for got, want in zip(under_autocast, (a.grad, b.grad)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_under_cpu_bf16_autocast_a_bf16_base_keeps_its_dtype():
    model = inject(nn.Sequential(nn.Linear(16, 8).to(torch.bfloat16)), LoraConfig(r=4, target_modules=["0"]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(torch.randn(5, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
