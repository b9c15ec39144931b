"""Which modules LoRA adapts when the config does not say: the attention and MLP projections of each architecture.

Keyed by `config.model_type` (PEFT keeps a table of the same kind). Every projection, not only query and value: with
all of them LoRA matches full fine-tuning at far lower rank (Hu et al. 2021 §7.1; Biderman et al. 2024; Schulman et
al. 2025, "LoRA Without Regret"), and bench/quality.py measures it on our tasks. The output head and modules_to_save
are never targets. An architecture not listed gets "all-linear", which finds the same layers by type.
"""

from torch import nn

from .config import ALL_LINEAR

ATTENTION_AND_MLP = {
    # encoders: self-attention q/k/v, attention output, intermediate and output dense layers (and the pooler's)
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    # decoders
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


def default_targets(model: nn.Module) -> list[str] | str:
    """The target_modules used when a config gives none: by architecture, else "all-linear"."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return ATTENTION_AND_MLP[model_type] if model_type in ATTENTION_AND_MLP else ALL_LINEAR
