"""What a version is registered from, checked before anything is written: the adapter folder's LoRA settings, the
merged model folder, the dataset fingerprint and the metrics."""

import math
import re
from pathlib import Path

from lora_core.errors import LoraError
from lora_core.peft_format import read_peft_config

from .errors import RegistryError
from .fingerprint import CONFIG_FILE
from .records import LoraSummary

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
HEX64 = re.compile(r"[0-9a-f]{64}")


def adapter_summary(folder: Path) -> tuple[LoraSummary, str | None]:
    """The adapter's LoRA settings and its task_type (which MLflow Model it becomes)."""
    missing = [name for name in ADAPTER_FILES if not (folder / name).is_file()]
    if missing:
        raise RegistryError(
            f"{folder}: missing {', '.join(missing)}; pass a folder written by save_adapter (PEFT format)"
        )
    try:
        config = read_peft_config(folder)
    except LoraError as e:
        raise RegistryError(str(e)) from None
    if not config.target_modules:
        raise RegistryError(f"{folder / ADAPTER_FILES[0]}: names no target_modules; re-save it with save_adapter")
    return LoraSummary(r=config.r, alpha=config.lora_alpha, targets=config.target_modules), config.task_type


def check_inputs(
    merged_dir: str | Path | None, dataset_fingerprint: str, metrics: dict[str, float], spectrum: dict[str, float]
) -> None:
    """Refuse a registration that would record bad lineage, before anything is written."""
    if merged_dir is not None:
        folder = Path(merged_dir)
        if not (folder / CONFIG_FILE).is_file() or not any(folder.glob("*.safetensors")):
            raise RegistryError(
                f"{folder}: a merged model needs config.json and *.safetensors; save it with "
                f"save_pretrained(..., safe_serialization=True)"
            )
    if not HEX64.fullmatch(dataset_fingerprint):
        raise RegistryError(
            f"dataset fingerprint {dataset_fingerprint!r} is not a sha256 hex digest; pass the digest of the data"
        )
    numbers = {**metrics, **spectrum}
    bad = [k for k, v in numbers.items() if not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise RegistryError(f"metric {bad[0]!r} = {numbers[bad[0]]!r} is not a finite number; fix the evaluation")
