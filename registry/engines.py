"""The rules serving engines apply when they load a LoRA adapter, checked before anything is uploaded.

Sources (read, not imported). vLLM's rules are also tested on vLLM 0.32 itself (tests/integration/
test_vllm_serving.py: each rule refused or accepted by the engine as here); LoRAX's and TGI's are as read.
- vLLM 0.26 `vllm/lora/peft_helper.py` (PEFTHelper.validate_legal: no modules_to_save, no DoRA, bias "none", rank
  <= --max-lora-rank), `vllm/config/lora.py` (MaxLoRARanks), the model classes that implement SupportsLoRA
  (which architectures; their linear projections, loaded by checkpoint name).
- LoRAX `server/lorax_server/utils/adapter.py` (the adapter's base_model_name_or_path must be the served
  --model-id, else its architecture is looked up and compared) and its per-architecture adapter layers.
- TGI 3.x (LoRA adapters via --lora-adapters; the same base-name check, taken over from LoRAX).

All three serve text generation: a classification adapter (its head is a saved module) ships merged, or through
MLflow (`serve_with: any`).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from lora_core.peft_format import PeftConfig, a_factor
from lora_core.safetensors_io import read_header

from .errors import RegistryError

ENGINES = ("any", "vllm", "lorax", "tgi")
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # MaxLoRARanks: the values --max-lora-rank takes
LLAMA_LIKE = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
ATTENTION = frozenset({"q_proj", "k_proj", "v_proj", "o_proj"})
PHI3 = frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"})
GPT2_LIKE = frozenset({"c_attn", "c_proj", "c_fc"})
# What all three carry a LoRA on (TGI took its list over from LoRAX).
SHARED = {
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "gemma": LLAMA_LIKE,
    "gemma2": LLAMA_LIKE,
    "mixtral": ATTENTION,
}
# model_type -> module names (checkpoint leaf names) each engine can carry a LoRA on.
MODULES = {
    "vllm": SHARED
    | {
        "llama": LLAMA_LIKE | {"lm_head"},  # vLLM 0.32 loads and applies a LoRA on lm_head (tested on the engine)
        "qwen3": LLAMA_LIKE,
        "granite": LLAMA_LIKE,
        "olmo2": LLAMA_LIKE,
        "phi3": PHI3,
        "gpt_bigcode": GPT2_LIKE,
        "starcoder2": ATTENTION | {"c_fc", "c_proj"},
    },
    "lorax": SHARED | {"phi3": PHI3, "gpt2": GPT2_LIKE},
    "tgi": SHARED,
}
NAMES = {"vllm": "vLLM", "lorax": "LoRAX", "tgi": "TGI"}


class NotServableError(RegistryError):
    """The adapter breaks a rule of the serving engine named in promotion.serve_with."""


@dataclass(frozen=True)
class AdapterTraits:
    """What the engines look at: adapter_config.json, the adapted modules' leaf names, and the base."""

    config: PeftConfig
    modules: frozenset[str] | None  # None when not known yet (a regex target before training)
    model_type: str | None  # the base's config.json model_type
    base_name: str  # the registered base's name: what the engine is started with


def check_engine_rules(engine: str, adapter: AdapterTraits, where: str) -> None:
    """Raise NotServableError naming the first rule `adapter` breaks for `engine` and the fix."""
    if engine == "any":
        return
    if engine not in ENGINES:
        raise NotServableError(f"promotion.serve_with {engine!r} is not one of {', '.join(ENGINES)}")
    name, config = NAMES[engine], adapter.config

    def refuse(rule: str, fix: str) -> NoReturn:
        raise NotServableError(
            f"{where}: {name} will not load this adapter: {rule}; {fix}, or set promotion.serve_with: any"
        )

    if config.task_type != "CAUSAL_LM":
        refuse(
            f"task_type is {config.task_type!r}, and {name} serves adapters of causal LMs only",
            "ship a classifier merged (promotion.mode: merged) or through MLflow",
        )
    if config.modules_to_save:
        refuse(
            f"modules_to_save {config.modules_to_save} (full copies of modules) is not supported",
            "train without lora.modules_to_save",
        )
    if config.use_dora:
        refuse("DoRA adapters are not supported", "train without DoRA")
    if config.bias != "none":
        refuse(f"bias {config.bias!r} is not supported", "train with bias: none")
    rank = config.max_rank
    if engine == "vllm" and rank > VLLM_MAX_LORA_RANKS[-1]:
        refuse(
            f"rank {rank} is above the largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})",
            f"train with lora.r <= {VLLM_MAX_LORA_RANKS[-1]} (or compress the adapter)",
        )
    supported = MODULES[engine].get(adapter.model_type or "")
    if supported is None:
        refuse(
            f"it has no LoRA support for base architecture {adapter.model_type or 'unknown'!r} (supported: "
            f"{', '.join(sorted(MODULES[engine]))})",
            "serve the merged model instead",
        )
    if adapter.modules is not None and not adapter.modules <= supported:
        refuse(
            f"target modules {sorted(adapter.modules - supported)} are not LoRA layers it has for "
            f"{adapter.model_type} ({', '.join(sorted(supported))})",
            "target only those",
        )
    if config.base_model_name_or_path != adapter.base_name:
        refuse(
            f"base_model_name_or_path {config.base_model_name_or_path!r} is not the base it is started "
            f"with ({adapter.base_name!r})",
            "save the adapter with base_model_name_or_path set to the base's name",
        )


def max_lora_rank(rank: int) -> int:
    """The smallest value of vLLM's --max-lora-rank that holds `rank`."""
    return next(value for value in VLLM_MAX_LORA_RANKS if value >= rank)


def adapted_modules(folder: Path) -> frozenset[str]:
    """Leaf names of the modules that carry LoRA weights (from the safetensors header: nothing else is read)."""
    entries, _ = read_header(Path(folder) / "adapter_model.safetensors")
    return frozenset(factor[0].rsplit(".", 1)[-1] for name in entries if (factor := a_factor(name)))
