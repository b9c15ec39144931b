"""Exception types raised by registry. Each message names the cause and the fix."""


class RegistryError(ValueError):
    """Bad input or a request the registry cannot satisfy (unknown task, version or alias; bad name)."""


class EnvironmentSettingError(RegistryError):
    """An environment variable the registry reads (LORAOPS_HOME, MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL) has a bad
    value; the message names the variable and the fix."""


class UnknownTaskError(RegistryError):
    """No task of that name is registered (yet)."""


class StoreError(RegistryError):
    """The artifact store cannot be reached or used: missing bucket, rejected credentials, bad target."""


class IntegrityError(RegistryError):
    """Bytes do not match their manifest: a flipped byte, a truncated or missing file."""


class BaseMismatchError(RegistryError):
    """An adapter is being used on a base model other than the one it was trained on."""


class ServerUnavailable(RegistryError):
    """A server (MLflow, S3) did not answer, timed out, or answered 5xx / throttling: transient, worth a bounded retry."""


class StoreUnavailable(StoreError, ServerUnavailable):
    """The S3-compatible store did not answer or is overloaded."""


class StoreStalled(StoreError):
    """The S3-compatible store stopped answering: its calls timed out within LORAOPS_STORE_TIMEOUT. Not retried
    (the bound already covers the retries); a store that gave up once fails the calls after it at once."""


class NoSpace(RegistryError):
    """Not enough free disk space for what is about to be written (checked before the write starts)."""


class DiskFull(StoreError):
    """The disk filled up during a write (ENOSPC): what was being written is removed, nothing half-written stays."""


class PromotionFailed(RegistryError):
    """Some tasks of a fleet promotion failed (named in the message); the others were promoted."""
