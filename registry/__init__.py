"""registry: adapter versions and artifacts (MLflow model registry + S3/local stores)."""

from .adapter_registry import AdapterRegistry
from .aliases import Drift, DriftError
from .errors import BaseMismatchError, IntegrityError, RegistryError, StoreError
from .fingerprint import fingerprint_weights, sha256_file
from .names import check_task_name
from .records import BaseName, BaseRecord, HistoryEvent, Lineage, LoraSummary, Promotion, VersionRecord
from .runs import MetricPoint, RunTracking
from .settings import RegistrySettings

__all__ = [
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
