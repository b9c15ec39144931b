"""lora_core: LoRA for PyTorch models — inject, train, merge, switch, save in PEFT's format.

from lora_core import LoraConfig, inject, merge_and_unload, save_adapter
inject(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))
"""

from .config import LoraConfig
from .errors import AdapterMismatchError, LoraError, MergeError, TargetError, UnsafeFormatError
from .inject import active_adapter, count_parameters, delete_adapter, inject, set_active_adapter
from .merge import merge, merge_and_unload, unmerge
from .peft_format import load_adapter, read_adapter_config, save_adapter

__all__ = [
    "AdapterMismatchError",
    "LoraConfig",
    "LoraError",
    "MergeError",
    "TargetError",
    "UnsafeFormatError",
    "active_adapter",
    "count_parameters",
    "delete_adapter",
    "inject",
    "load_adapter",
    "merge",
    "merge_and_unload",
    "read_adapter_config",
    "save_adapter",
    "set_active_adapter",
    "unmerge",
]
