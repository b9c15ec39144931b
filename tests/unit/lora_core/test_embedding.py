"""LoRA on an nn.Embedding (PEFT's lora_embedding_A/B): PEFT loads ours and we load PEFT's with the same outputs, the
in-memory and the streaming merge equal the unmerged adapter, the analysis reads it, and what cannot work is refused."""

import peft
import pytest
import torch
from conftest import build, inputs, output, rel_diff
from safetensors.torch import load_file

from lora_core import LoraConfig, LoraError, TargetError, inject, load_adapter, merge_and_unload, save_adapter
from lora_core.analysis import adapter_report, compress
from lora_core.checkpoint_merge import merge_checkpoint
from lora_core.injection import lora_layers
from registry.engines import adapted_modules

TARGETS = ["query", "value", "word_embeddings"]
EMBEDDING = "bert.embeddings.word_embeddings"


def adapted(seed: int = 2, **config) -> torch.nn.Module:
    """The tiny BERT with LoRA on query, value and the word embeddings, both factors random (A = 0 at init)."""
    model = build("bert")
    inject(model, LoraConfig(**({"r": 4, "alpha": 8, "target_modules": TARGETS} | config)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for factor in layer.factors("default"):
                factor.copy_(torch.randn(factor.shape, generator=g) * 0.3)
    return model


def test_an_embedding_update_starts_at_zero_and_trains():
    model = build("bert")
    x = inputs("bert")
    before = output(model, x)
    inject(model, LoraConfig(r=4, alpha=8, target_modules=["word_embeddings"]))
    layer = lora_layers(model)[EMBEDDING]
    assert layer.embedding and layer.fan_in_fan_out and (layer.in_features, layer.out_features) == (64, 32)
    assert rel_diff(output(model, x), before) == 0  # A = 0: no change at step 0
    b = layer.factors("default")[1]
    assert b.std().item() == pytest.approx(layer.weight.std().item(), rel=0.2)  # B drawn like the embedding
    model.train()
    model(x).logits.sum().backward()
    a = layer.factors("default")[0]
    assert a.grad is not None and a.grad[:, x.unique()].abs().sum() > 0  # the looked-up tokens' columns learn
    assert a.grad[:, 0].abs().sum() == 0  # a token not in the batch (0 is also BERT's padding) does not


def test_peft_loads_our_embedding_adapter_with_the_same_outputs(tmp_path):
    model = adapted()
    x = inputs("bert")
    save_adapter(model, tmp_path)
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert {f"base_model.model.{EMBEDDING}.lora_embedding_A", f"base_model.model.{EMBEDDING}.lora_embedding_B"} <= keys
    theirs = peft.PeftModel.from_pretrained(build("bert"), str(tmp_path)).eval()
    assert rel_diff(output(theirs, x), output(model, x)) <= 1e-5
    assert rel_diff(output(model, x), output(build("bert"), x)) > 1e-3
    assert rel_diff(output(load_adapter(build("bert"), tmp_path), x), output(model, x)) <= 1e-6


def test_we_load_peft_embedding_adapters_with_peft_outputs(tmp_path):
    torch.manual_seed(5)  # init_lora_weights=False: PEFT's A and B of the embedding random
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    theirs = peft.get_peft_model(build("bert"), config).eval()
    x = inputs("bert")
    theirs.save_pretrained(str(tmp_path))
    assert rel_diff(output(load_adapter(build("bert"), tmp_path), x), output(theirs, x)) <= 1e-5


def test_merges_in_memory_and_on_disk_equal_the_unmerged_adapter(tmp_path):
    model = adapted()
    x = inputs("bert")
    expected = output(model, x)
    build("bert").save_pretrained(tmp_path / "base", max_shard_size="20KB")
    save_adapter(model, tmp_path / "adapter")
    merge_checkpoint(tmp_path / "base", tmp_path / "adapter", tmp_path / "merged")
    on_disk = type(model).from_pretrained(tmp_path / "merged").eval()
    assert rel_diff(output(on_disk, x), expected) <= 1e-5
    assert rel_diff(output(merge_and_unload(model), x), expected) <= 1e-5


def test_the_analysis_reads_an_embedding_update_against_its_base(tmp_path):
    model = adapted()
    save_adapter(model, tmp_path / "adapter")
    build("bert").save_pretrained(tmp_path / "base")
    report = adapter_report(tmp_path / "adapter", base=tmp_path / "base")
    row = next(r for r in report.modules if r.module == EMBEDDING)
    assert row.shape == (32, 64) and row.ranks.p99 <= 4 and row.amplification and row.amplification > 0
    small = compress(tmp_path / "adapter", rank=2).adapter
    assert small.modules[EMBEDDING].embedding and small.modules[EMBEDDING].rank == 2
    small.save(tmp_path / "small")
    assert load_adapter(build("bert"), tmp_path / "small") is not None
    assert "word_embeddings" in adapted_modules(tmp_path / "adapter")  # so the engine rules see it


def test_what_an_embedding_cannot_take_is_refused():
    with pytest.raises(TargetError, match="shares its weight with 'lm_head'"):  # GPT-2 ties wte and lm_head
        inject(build("gpt2"), LoraConfig(r=4, alpha=8, target_modules=["wte"]))
    with pytest.raises(LoraError, match="init='pissa' applies to linear layers"):
        inject(build("bert"), LoraConfig(r=4, alpha=8, target_modules=["word_embeddings"], init="pissa"))
    model = inject(build("bert"), LoraConfig(r=2, alpha=4, target_modules="all-linear"))
    assert not any(layer.embedding for layer in lora_layers(model).values())  # all-linear means linear layers
