"""Exception types raised by registry. Each message names the cause and the fix."""


class RegistryError(ValueError):
    """Bad input or a request the registry cannot satisfy (unknown task, version or alias; bad name)."""


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


class PromotionFailed(RegistryError):
    """Some tasks of a fleet promotion failed (named in the message); the others were promoted."""
