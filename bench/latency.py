"""Zero inference latency, measured: base vs unmerged adapter vs merged model on the same inputs.

Classification: MiniLM forward passes on real synopses (64 tokens), batch 1 and 32. Causal LM: greedy decoding with
the KV cache on a Llama shape (100M parameters in full mode), batch 1 and 32, time per generated token. The adapter
is r=8 on every attention and MLP projection (the default targets) with non-zero B (a trained adapter's cost, not an
identity). Anchor: the base model itself; the merged model should cost the same (ratio 1.0), the unmerged adapter a
little more (its extra B·A matmuls per layer). Repeats: 60/20 forwards and 15/9 decodes; with 30/8 and 5/3 the
merged model, the base's own computation, read 0.96-1.18x the base between two runs on 2 cores.
"""

import copy
import json
from pathlib import Path

import torch

from bench.harness import interleaved
from lora_core import LoraConfig, inject, merge_and_unload
from lora_core.injection import lora_layers

ROOT = Path(__file__).resolve().parent.parent


def with_adapter(model: torch.nn.Module, **config) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(unmerged, merged) copies of `model` carrying the same r=8 adapter on every attention and MLP projection."""
    unmerged = inject(copy.deepcopy(model), LoraConfig(r=8, alpha=16, **config))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in lora_layers(unmerged).values():
            w = layer.lora_B["default"].weight
            w.copy_(torch.randn(w.shape, generator=g) * 0.02)
    return unmerged, merge_and_unload(copy.deepcopy(unmerged))


def rows_for(case: str, times: dict[str, float], tokens: int) -> list[dict]:
    from bench.cases import row

    out = []
    for name in ("merged", "unmerged"):
        out.append(
            row(
                f"{case}: {name} adapter vs base, per token (s)",
                times[name] / tokens,
                times["base"] / tokens,
                "s",
                "merged <= 1.05x base" if name == "merged" else "report",
                f"{tokens / times[name]:,.0f} tokens/s vs base {tokens / times['base']:,.0f}",
            )
        )
    return out


@torch.no_grad()
def classification(quick: bool) -> list[dict]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipelines.models import default_base_model

    path = default_base_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=4).eval()
    unmerged, merged = with_adapter(base, modules_to_save=["classifier"])
    lines = (ROOT / "examples" / "data" / "package-sections.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in lines[:32]]
    rows = []
    for batch in (1, 32):
        inputs = tokenizer(texts[:batch], padding="max_length", truncation=True, max_length=64, return_tensors="pt")
        models = {"base": base, "unmerged": unmerged, "merged": merged}
        times = interleaved(
            {name: (lambda m=m: m(**inputs)) for name, m in models.items()},
            repeats=2 if quick else (60 if batch == 1 else 20),
        )
        rows += rows_for(f"MiniLM classifier forward, batch {batch}x64", times, batch * 64)
    return rows


@torch.no_grad()
def causal_lm(quick: bool) -> list[dict]:
    from bench.models import llama

    base = llama("tiny" if quick else "100m")
    unmerged, merged = with_adapter(base)
    new_tokens, prompt = (4, 8) if quick else (32, 32)
    rows = []
    for batch in (1, 32):
        ids = torch.randint(3, base.config.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(batch))

        def decode(model):
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )

        models = {"base": base, "unmerged": unmerged, "merged": merged}
        times = interleaved(
            {name: (lambda m=m: decode(m)) for name, m in models.items()},
            repeats=1 if quick else (15 if batch == 1 else 9),
        )
        params = sum(p.numel() for p in base.parameters()) / 1e6
        rows += rows_for(f"Llama {params:.0f}M greedy decode, batch {batch}", times, batch * new_tokens)
    return rows


def latency(quick: bool) -> list[dict]:
    return classification(quick) + causal_lm(quick)
