"""registry: adapter versions and artifacts (MLflow model registry + S3/local stores).

Names load on first use (PEP 562): `import registry.errors` or `registry.settings` costs no MLflow import, so a
command that never touches the registry server starts fast.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .adapter_registry import AdapterRegistry
    from .aliases import Drift, DriftError
    from .errors import BaseMismatchError, IntegrityError, RegistryError, StoreError
    from .fingerprint import fingerprint_weights, sha256_file
    from .names import check_task_name
    from .records import BaseName, BaseRecord, HistoryEvent, Lineage, LoraSummary, Promotion, VersionRecord
    from .runs import MetricPoint, RunTracking
    from .settings import RegistrySettings

_SOURCES = {
    "adapter_registry": ["AdapterRegistry"],
    "aliases": ["Drift", "DriftError"],
    "errors": ["BaseMismatchError", "IntegrityError", "RegistryError", "StoreError"],
    "fingerprint": ["fingerprint_weights", "sha256_file"],
    "names": ["check_task_name"],
    "records": ["BaseName", "BaseRecord", "HistoryEvent", "Lineage", "LoraSummary", "Promotion", "VersionRecord"],
    "runs": ["MetricPoint", "RunTracking"],
    "settings": ["RegistrySettings"],
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}
__all__ = [  # as _SOURCES names them (a test checks); written out for the linters
    "AdapterRegistry",
    "BaseMismatchError",
    "BaseName",
    "BaseRecord",
    "Drift",
    "DriftError",
    "HistoryEvent",
    "IntegrityError",
    "Lineage",
    "LoraSummary",
    "MetricPoint",
    "Promotion",
    "RegistryError",
    "RegistrySettings",
    "RunTracking",
    "StoreError",
    "VersionRecord",
    "check_task_name",
    "fingerprint_weights",
    "sha256_file",
]


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value
