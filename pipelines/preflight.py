"""Everything a run can check before it does any work, in one pass, each failure one line naming the fix.

In order, cheapest first: the device, the base folder (config, complete safetensors files: each header agrees with
its file's length), the LoRA targets against the architecture (the model built on the meta device: no memory, no
weights read), training.max_length against the tokenizer (max_length.py), the serving engine's rules, the
promotion target (scheme, bucket, credentials: one HEAD) and the MLflow tracking server (one GET). The data is
checked by prepare_data, right after.
"""

import os
import re
from pathlib import Path

import torch

from lora_core import LoraConfig, TargetError
from lora_core.checkpoint_merge import INDEX_FILE, base_shards
from lora_core.injection import resolve_saved_modules, resolve_targets
from lora_core.model_files import ModelConfig, read_model_config
from lora_core.peft_format import PeftConfig
from lora_core.safetensors_io import read_header
from registry import RegistrySettings
from registry.engines import AdapterTraits, check_engine_rules
from registry.errors import ServerUnavailable
from registry.free_space import check_space
from registry.stores import open_store

from .errors import SpecError
from .max_length import check_max_length
from .models import BaseModelError, quantization, resolve_base
from .run_space import run_needs
from .spec import TaskSpec
from .steps import task_lora

# A fast tokenizer's one file, or a slow tokenizer's vocabulary (WordPiece, BPE, SentencePiece), as transformers saves them.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "spm.model",
)


def preflight(spec: TaskSpec, settings: RegistrySettings) -> None:
    check_device(spec)
    base_path, base_name = resolve_base(spec.base)
    config = check_base_folder(base_path)
    lora = check_targets(spec, base_path)
    check_max_length(spec, base_path, config)
    check_serving(spec, lora, config.model_type, base_name)
    check_space(run_needs(spec, settings, base_path))  # the merged model and its copies, before any is written
    if spec.promotion.auto:
        open_store(spec.promotion.target or settings.promotion_target).check()
    check_tracking(settings.tracking_uri)


def check_device(spec: TaskSpec) -> None:
    t = spec.training
    if t.device == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise SpecError(
            f"{spec.source}: training.device: cuda, but no CUDA GPU is visible (torch {torch.__version__}, "
            f"{build}); use device: auto or cpu, or run on a GPU machine"
        )
    if t.device != "cpu" and torch.cuda.is_available() and t.nproc > torch.cuda.device_count():
        raise SpecError(
            f"{spec.source}: training.nproc: {t.nproc}, but {torch.cuda.device_count()} GPU(s) are visible; "
            f"use nproc <= {torch.cuda.device_count()}"
        )
    if spec.base.load_in_4bit:
        quantization(True)  # CUDA and bitsandbytes, or one line saying which is missing
    endpoint = os.environ.get("LORAOPS_RDZV_ENDPOINT")
    if t.nnodes > 1 and endpoint is not None and not re.fullmatch(r"[\w.\-]+:\d{1,5}", endpoint):
        raise SpecError(
            f"LORAOPS_RDZV_ENDPOINT={endpoint!r} is not HOST:PORT; set it to an address of this node that "
            f"the other nodes reach, e.g. 10.0.0.5:29400"
        )


def check_base_folder(path: Path) -> ModelConfig:
    """The base's config.json (a JSON object naming a model_type transformers knows), after checking that the
    folder has tokenizer files and that every weight file, and every shard its index names, is complete safetensors.
    Files are read by lora_core's rules (regular files only, bounded JSON): a damaged one is one line naming it."""
    if not os.path.lexists(path / "config.json"):
        raise BaseModelError(f"base {path}: no config.json; a base is a folder saved with save_pretrained")
    config = read_model_config(path, "re-save the base with save_pretrained")
    check_model_type(path, config)
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not os.path.lexists(path / INDEX_FILE):
        pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = (
            (
                f"found {', '.join(pickles[:3])}: pickle files are never loaded; re-save with "
                f"save_pretrained(..., safe_serialization=True)"
            )
            if pickles
            else "save it with save_pretrained"
        )
        raise BaseModelError(f"base {path}: no *.safetensors weights ({hint})")
    for weight in sorted(set(weights) | set(base_shards(path))):
        read_header(weight)
    check_tokenizer_files(path)
    return config


def check_model_type(path: Path, config: ModelConfig) -> None:
    """config.json names a model_type this transformers knows (else AutoConfig fails with a traceback)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = config.model_type
    if model_type is None:
        raise BaseModelError(f"base {path / 'config.json'}: names no model_type; re-save the base with save_pretrained")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise BaseModelError(
            f"base {path / 'config.json'}: model_type {model_type[:60]!r} is not an architecture transformers "
            f"{transformers.__version__} knows; pick a base of a known architecture (e.g. bert, llama) or upgrade "
            f"transformers"
        )


def check_tokenizer_files(path: Path) -> None:
    """A tokenizer is saved beside the weights: without one, transformers builds a vocabulary of the special tokens
    alone and training learns nothing from the text."""
    if not any(os.path.lexists(path / name) for name in TOKENIZER_FILES) and not any(path.glob("*.tiktoken")):
        raise BaseModelError(
            f"base {path}: no tokenizer files (expected tokenizer.json, or a vocabulary: "
            f"{', '.join(TOKENIZER_FILES[1:])}); save the tokenizer beside the model "
            f"(tokenizer.save_pretrained(folder))"
        )


def check_targets(spec: TaskSpec, base_path: Path) -> LoraConfig:
    """The task's adapter config with its targets resolved, checked against the model built on the meta device
    (shapes, no memory): target_modules (or the architecture's defaults) and modules_to_save."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(base_path)
    auto = AutoModelForSequenceClassification if spec.type == "classification" else AutoModelForCausalLM
    try:
        with torch.device("meta"):
            model = auto.from_config(config)
    except ValueError as e:  # the architecture has no head of this kind
        raise BaseModelError(
            f"base {base_path}: {config.model_type} cannot be a {spec.type} model "
            f"({str(e).splitlines()[0][:120]}); pick a base of that kind"
        ) from None
    if spec.lora.modules_to_save and not resolve_saved_modules(model, spec.lora):
        raise TargetError(
            f"modules_to_save {spec.lora.modules_to_save} matched no module of {config.model_type}; "
            f"name e.g. the classifier head"
        )
    lora = task_lora(spec, model)
    return lora.model_copy(update={"target_modules": sorted(resolve_targets(model, lora))})


def check_serving(spec: TaskSpec, lora: LoraConfig, model_type: str | None, name: str) -> None:
    """promotion.serve_with's rules on the adapter the task file describes, targets resolved (the trained adapter
    is checked again at promotion). A merged model is served as a model of its own: no adapter rules apply."""
    if spec.promotion.serve_with == "any" or spec.promotion.mode != "adapter":
        return
    modules = frozenset(t.rsplit(".", 1)[-1] for t in lora.target_modules or [])
    traits = AdapterTraits(PeftConfig.of(lora, False, name), modules, model_type, name)
    check_engine_rules(spec.promotion.serve_with, traits, f"{spec.source or spec.task}")


def check_tracking(uri: str) -> None:
    """An MLflow tracking server answers its health check (a local database needs no server)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=10).raise_for_status()
    except requests.RequestException as e:
        raise ServerUnavailable(
            f"the MLflow tracking server at {uri} does not answer ({type(e).__name__}); start it "
            f"or fix MLFLOW_TRACKING_URI"
        ) from None
