"""lora_core: LoRA for PyTorch models — inject, train, merge, switch, save in PEFT's format.

from lora_core import LoraConfig, inject, merge_and_unload, save_adapter
inject(model, LoraConfig(r=8, alpha=16, target_modules=["query", "value"]))

Names load on first use (PEP 562): `LoraConfig` and the errors cost no torch import, so a task file is checked (and
a bad one refused) before torch loads.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import LoraConfig
    from .errors import AdapterMismatchError, LoraError, MergeError, TargetError, UnsafeFormatError
    from .injection import active_adapter, count_parameters, delete_adapter, inject, set_active_adapter
    from .merging import merge, merge_and_unload, unmerge
    from .peft_format import load_adapter, read_adapter_config, save_adapter

_SOURCES = {
    "config": ["LoraConfig"],
    "errors": ["AdapterMismatchError", "LoraError", "MergeError", "TargetError", "UnsafeFormatError"],
    "injection": ["active_adapter", "count_parameters", "delete_adapter", "inject", "set_active_adapter"],
    "merging": ["merge", "merge_and_unload", "unmerge"],
    "peft_format": ["load_adapter", "read_adapter_config", "save_adapter"],
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}
__all__ = [  # as _SOURCES names them (a test checks); written out for the linters
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


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'lora_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value
