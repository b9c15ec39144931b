"""Everything a run can check before it does any work, in one pass, each failure one line naming the fix.

In order, cheapest first: the device, the base folder (config, complete safetensors files: each header agrees with
its file's length), the LoRA targets against the architecture (the model built on the meta device: no memory, no
weights read), the serving engine's rules, the promotion target (scheme, bucket, credentials: one HEAD) and the
MLflow tracking server (one GET). The data is checked by prepare_data, right after.
"""

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from lora_core import LoraConfig, TargetError
from lora_core.inject import resolve_saved_modules, resolve_targets
from lora_core.peft_format import peft_config_dict
from lora_core.safetensors_io import read_header
from registry import RegistrySettings
from registry.engines import AdapterTraits, check_engine_rules
from registry.errors import ServerUnavailable
from registry.stores import open_store

from .models import BaseModelError, quantization, resolve_base
from .spec import SpecError, TaskSpec
from .steps import task_lora


def preflight(spec: TaskSpec, settings: RegistrySettings) -> None:
    check_device(spec)
    base_path, base_name = resolve_base(spec.base)
    config = check_base_folder(base_path)
    lora = check_targets(spec, base_path)
    check_serving(spec, lora, config.get("model_type"), base_name)
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


def check_base_folder(path: Path) -> dict[str, Any]:
    """The base's config.json, after checking that every weight file is complete safetensors."""
    if not (path / "config.json").is_file():
        raise BaseModelError(f"base {path}: no config.json; a base is a folder saved with save_pretrained")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
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
    for weight in weights:
        try:
            read_header(weight)
        except OSError as e:
            raise BaseModelError(f"base {weight}: unreadable ({e.strerror}); check its permissions") from None
    try:
        return json.loads((path / "config.json").read_text())
    except (ValueError, UnicodeDecodeError):
        raise BaseModelError(f"base {path / 'config.json'}: not valid JSON; re-save the base") from None


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
    traits = AdapterTraits(peft_config_dict(lora, False, name), modules, model_type, name)
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
