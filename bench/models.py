"""Synthetic models for the benchmarks: Llama shapes with random weights, built once and kept on disk."""

import json
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lora_core import LoraConfig
from lora_core.checkpoint_merge import base_shards
from lora_core.peft_format import PREFIX, write_adapter
from lora_core.safetensors_io import read_header

SHAPES = {  # name -> LlamaConfig arguments
    "tiny": dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "100m": dict(
        vocab_size=8000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
    ),
    # vLLM's CPU attention wants head_dim >= 64 (8 heads of 64); MiniLM's WordPiece vocabulary, so that every token
    # the engine streams decodes to text
    "serving": dict(
        vocab_size=30522,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
    ),
    # TinyLlama-1.1B's shape
    "1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
    ),
}
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama(shape: str, dtype=torch.float32, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=512, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).to(dtype).eval()


def llama_on_disk(shape: str, folder: Path, shard: str = "500MB", tokenizer: Path | None = None) -> Path:
    """A bf16 sharded checkpoint of `shape` in `folder` (built on first use) with a byte-level tokenizer, or the one
    in the folder `tokenizer` (its vocabulary the size of the shape's)."""
    if (folder / "config.json").is_file():
        return folder
    model = llama(shape, torch.bfloat16)
    model.save_pretrained(folder, max_shard_size=shard)
    del model
    if tokenizer is None:
        write_tokenizer(folder)
    else:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)
    return folder


def write_tokenizer(folder: Path) -> None:
    """A byte-level BPE tokenizer with no merges (256 bytes + 3 specials): enough to run text through a random model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {ch: i + 3 for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    ).save_pretrained(folder)


def adapter_for(base: Path, out: Path, r: int = 16, seed: int = 0, base_name: str | None = None) -> Path:
    """An all-linear LoRA adapter for a Llama checkpoint, with non-zero random B (as if trained); base_name: its
    base_model_name_or_path (default the checkpoint's folder), the registered name where it is registered."""
    if (out / "adapter_model.safetensors").is_file():
        return out
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for shard in base_shards(base):
        for name, entry in read_header(shard)[0].items():
            module = name.removesuffix(".weight")
            if module.rsplit(".", 1)[-1] in LINEAR:
                out_f, in_f = entry.shape
                tensors[f"{PREFIX}{module}.lora_A.weight"] = torch.randn(r, in_f, generator=g) / in_f**0.5
                tensors[f"{PREFIX}{module}.lora_B.weight"] = torch.randn(out_f, r, generator=g) * 0.01
    config = LoraConfig(r=r, alpha=2 * r, target_modules=list(LINEAR), task_type="CAUSAL_LM")
    write_adapter(out, tensors, config, base_model_name_or_path=base_name or str(base))
    return out


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def shard_sizes(folder: Path) -> list[int]:
    return [p.stat().st_size for p in base_shards(folder)]


def describe(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    return f"{config['num_hidden_layers']} layers, hidden {config['hidden_size']}, {folder_bytes(folder) / 1e9:.2f} GB bf16"
