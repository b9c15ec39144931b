"""Training's CPU dropout: the mask it draws has nn.Dropout's distribution, its attention path computes what sdpa
computes (padding, causal, grouped-query heads), and the model is given back unchanged."""

import pytest
import torch
from conftest import build, inputs
from torch import nn

from pipelines.cpu_dropout import ATTENTION, CpuDropout, cpu_dropout, drop

CPU = torch.device("cpu")


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_has_the_dropout_distribution(p):
    torch.manual_seed(0)
    x = torch.rand(400, 1000) + 1.0
    y = drop(x, p)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.005  # 400k draws: the standard error is under 0.001
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    assert abs(y.mean().item() / x.mean().item() - 1) < 0.025  # the mean kept (5 standard errors at p = 0.9)


def test_drop_is_reproducible_from_the_seed_and_passes_gradient_through_kept_elements():
    x = torch.randn(7, 13, requires_grad=True)
    torch.manual_seed(3)
    a = drop(x, 0.3)
    torch.manual_seed(3)
    b = drop(x, 0.3)
    assert torch.equal(a, b)
    a.sum().backward()
    assert torch.allclose(x.grad, (a != 0).float() / 0.7)
    assert drop(x, 0.0) is x


def tiny_dropout(model: nn.Module, p: float) -> nn.Module:
    """Every dropout of the model set to p, the attention's too (Llama keeps it as a float on the module)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = p
    return model


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_attention_path_computes_what_sdpa_computes(name):
    """With p = 1e-9 the CPU path runs (dropout > 0) but drops nothing: it must then equal sdpa's output, with
    left padding, a causal mask, grouped-query heads (Llama: 4 query heads on 2 key/value heads)."""
    model = tiny_dropout(build(name), 1e-9)
    assert model.config._attn_implementation == "sdpa"
    ids = inputs(name)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        want = [model(input_ids=ids).logits, model(input_ids=ids, attention_mask=mask).logits]
        with cpu_dropout(model, CPU):
            assert model.config._attn_implementation == ATTENTION
            model.train()
            got = [model(input_ids=ids).logits, model(input_ids=ids, attention_mask=mask).logits]
            model.eval()
    assert torch.allclose(got[0], want[0], atol=1e-5)
    rows = slice(None) if name == "bert" else slice(3, None)  # a causal model's padded query rows are not compared
    assert torch.allclose(got[1][:, rows], want[1][:, rows], atol=1e-5)


def test_attention_dropout_drops_on_the_cpu_path():
    """With real dropout in training the outputs vary with the seed, and in eval they do not."""
    model = tiny_dropout(build("bert"), 0.3)
    ids = inputs("bert")
    with torch.no_grad(), cpu_dropout(model, CPU):
        model.train()
        torch.manual_seed(1)
        a = model(input_ids=ids).logits
        torch.manual_seed(2)
        b = model(input_ids=ids).logits
        model.eval()
        c, d = model(input_ids=ids).logits, model(input_ids=ids).logits
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)


def test_the_model_is_given_back_as_it_was_even_after_an_error():
    model = build("gpt2")
    before = [type(m) for m in model.modules()]
    with pytest.raises(RuntimeError, match="stop"), cpu_dropout(model, CPU):
        assert any(type(m) is CpuDropout for m in model.modules())
        raise RuntimeError("stop")
    assert [type(m) for m in model.modules()] == before
    assert model.config._attn_implementation == "sdpa"


def test_off_the_cpu_nothing_changes():
    model = build("bert")
    with cpu_dropout(model, torch.device("cuda")):
        assert not any(type(m) is CpuDropout for m in model.modules())
        assert model.config._attn_implementation == "sdpa"
