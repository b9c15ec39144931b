"""registry: adapter versions and artifacts (MLflow model registry + S3/local stores)."""

from .adapter_registry import AdapterRegistry
from .errors import BaseMismatchError, IntegrityError, RegistryError, StoreError
from .fingerprint import fingerprint_weights, sha256_file
from .names import check_task_name
from .records import BaseRecord, HistoryEvent, Promotion, VersionRecord
from .settings import RegistrySettings

__all__ = ["AdapterRegistry", "BaseMismatchError", "BaseRecord", "HistoryEvent", "IntegrityError", "Promotion",
           "RegistryError", "RegistrySettings", "StoreError", "VersionRecord", "check_task_name",
           "fingerprint_weights", "sha256_file"]
