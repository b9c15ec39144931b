"""Which failures are worth retrying, and network settings that make every call end.

Transient: a server that did not answer, reset the connection, timed out, or answered 5xx / throttling. Everything
else (bad input, a missing bucket, rejected credentials, a checksum mismatch) fails the same way every time and is
never retried.
"""

import os

from .errors import ServerUnavailable

# MLflow's client retries 7 times with backoff factor 2 by default: minutes before a dead server is reported.
MLFLOW_NETWORK = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
TRANSIENT_MLFLOW_CODES = {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"}
TRANSIENT_TEXT = (
    "Max retries exceeded",
    "Connection aborted",
    "Connection refused",
    "Read timed out",
    "RemoteDisconnected",
    "Connection reset",
    "too many 5",
)


def network_defaults() -> None:
    """Bounded timeouts and retries for MLflow's HTTP client, unless the user set their own."""
    for name, value in MLFLOW_NETWORK.items():
        os.environ.setdefault(name, value)


def is_transient(error: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    if isinstance(error, ServerUnavailable):
        return True
    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_MLFLOW_CODES or any(text in str(error) for text in TRANSIENT_TEXT)
    return isinstance(error, (ConnectionError, TimeoutError))


def server_message(error: BaseException, tracking_uri: str) -> str | None:
    """One line for an MLflow server that is down or failing, or None if `error` is something else."""
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException) or not is_transient(error):
        return None
    return (
        f"the MLflow tracking server at {tracking_uri} did not answer ({_reason(str(error))}) after "
        f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES', '?')} retries; start it or fix MLFLOW_TRACKING_URI, "
        f"then run again (a finished registration is not repeated)"
    )


def _reason(text: str) -> str:
    return next((t for t in TRANSIENT_TEXT if t in text), text.splitlines()[0][:120])
