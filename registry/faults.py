"""Which failures are worth retrying, and network settings that make every call end.

Transient: a server that did not answer, reset the connection, timed out, or answered 5xx / throttling. Everything
else (bad input, a missing bucket, rejected credentials, a checksum mismatch) fails the same way every time and is
never retried.
"""

import json
import math
import os
from typing import TYPE_CHECKING, NamedTuple

from .errors import RegistryError, ServerUnavailable

if TYPE_CHECKING:
    from mlflow.exceptions import RestException

# MLflow's client retries 7 times with backoff factor 2 by default: minutes before a dead server is reported. Ours:
# 3 tries of at most 30 s each (a stalled read), with 1 s and 2 s (+ up to 1 s jitter each) between: <= 96 s.
MLFLOW_NETWORK = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
STORE_TIMEOUT = "LORAOPS_STORE_TIMEOUT"
DEFAULT_STORE_TIMEOUT = 120.0
STORE_ATTEMPTS = 2  # botocore's "standard" mode: the first try and one retry, after at most 1 s


class StoreBound(NamedTuple):
    """How long loraops waits on an S3 store that stopped answering. One call ends within `per_call` seconds
    (attempts x (connect + read) + the backoff between them); calls already in flight when the first one gives
    up end within `per_call` more, and none starts after (S3Store), so a stalled store is given up on within
    `total` = 2 x per_call."""

    total: float
    connect: float
    read: float
    attempts: int

    @property
    def per_call(self) -> float:
        return self.total / 2


def store_bound() -> StoreBound:
    """The bound from $LORAOPS_STORE_TIMEOUT (seconds, default 120: 2 tries of 5 s to connect + 24.5 s to read)."""
    text = os.environ.get(STORE_TIMEOUT, "").strip()
    try:
        total = float(text) if text else DEFAULT_STORE_TIMEOUT
    except ValueError:
        total = math.nan
    if not (math.isfinite(total) and 4 <= total <= 86_400):
        raise RegistryError(
            f"{STORE_TIMEOUT}={text!r} is not a number of seconds from 4 to 86400; set it to e.g. "
            f"{DEFAULT_STORE_TIMEOUT:.0f} (the longest wait on a stalled S3 store) or unset it"
        )
    per_try = (total / 2 - (STORE_ATTEMPTS - 1)) / STORE_ATTEMPTS  # the backoff before the retry: at most 1 s
    connect = min(5.0, per_try / 3)
    return StoreBound(total, connect, per_try - connect, STORE_ATTEMPTS)


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


def retry_step(error: BaseException) -> bool:
    """Whether a flow step that failed with `error` is worth running again: a transient fault, unless it is a
    timeout, whose client already waited out its whole bound (MLflow: timeout x tries; S3: StoreBound), or a
    refused login that MLflow's client took for a server error (a gateway's JSON 401/403)."""
    if not is_transient(error) or "timed out" in str(error):
        return False
    return login_message(error, os.environ.get("MLFLOW_TRACKING_URI", "")) is None


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


def login_message(error: BaseException, tracking_uri: str) -> str | None:
    """One line for an MLflow server (its basic-auth app, or a gateway in front) that refused this client's login
    (401) or this account's permission (403), from its REST API or its artifact proxy, or None if `error` is
    something else."""
    from mlflow.exceptions import MlflowException, RestException
    from requests import HTTPError

    if isinstance(error, RestException) and _not_mlflows(error):
        status, probed = _status_of(tracking_uri)
        said = _message(error.json) or probed
    elif isinstance(error, MlflowException):
        status = {"UNAUTHENTICATED": 401, "CUSTOMER_UNAUTHORIZED": 401, "PERMISSION_DENIED": 403}.get(error.error_code)
        said = error.message
    elif isinstance(error, HTTPError) and error.response is not None:
        status, said = error.response.status_code, error.response.text
    else:
        return None
    if status == 401:
        return (
            f"the MLflow tracking server at {tracking_uri} refused the login (401); set MLFLOW_TRACKING_USERNAME and "
            f"MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) to an account of that server"
        )
    if status == 403:
        who = os.environ.get("MLFLOW_TRACKING_USERNAME")
        return (
            f"the MLflow tracking server at {tracking_uri} refused {who or 'this client'} (403: "
            f"{_answer(said)}); have an admin grant the permission, or log in as an account that has it"
        )
    return None


def _not_mlflows(error: "RestException") -> bool:
    """A JSON answer without an error code MLflow knows: a gateway in front of MLflow answered (MLflow's client
    calls it an INTERNAL_ERROR and drops the HTTP status)."""
    return error.error_code == "INTERNAL_ERROR" and error.json.get("error_code") != "INTERNAL_ERROR"


def _status_of(tracking_uri: str) -> tuple[int | None, str]:
    """The HTTP status and body of one plain read of the server with this client's login (at most 5 s to connect
    and 5 s to answer, no retries). It reads the experiment list: a gateway that refuses only some paths answers
    it, and the first error stands."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        answer = http_request(
            get_default_host_creds(tracking_uri),
            "/api/2.0/mlflow/experiments/search",
            "GET",
            max_retries=0,
            timeout=(5, 5),
            params={"max_results": 1},
        )
    except Exception:  # noqa: BLE001  (the server's first answer stands; this read only names its cause)
        return None, ""
    return answer.status_code, answer.text


def _answer(text: str) -> str:
    """What the server said: the body MLflow's client quotes for a plain-text answer, a JSON answer's message, else
    the first line."""
    _, quoted, body = text.partition("Response body: '")
    text = body.removesuffix("'") if quoted else text
    try:
        message = _message(json.loads(text))
    except (ValueError, RecursionError):
        message = None
    return _first_line(message or text)


def _message(answer: object) -> str | None:
    """The message of a JSON error answer: MLflow's and most gateways' `message`, FastAPI's `detail`, or `error`."""
    if not isinstance(answer, dict):
        return None
    return next((answer[k] for k in ("message", "detail", "error") if isinstance(answer.get(k), str)), None)


def _reason(text: str) -> str:
    return next((t for t in TRANSIENT_TEXT if t in text), _first_line(text))


def _first_line(text: str) -> str:
    return (text.splitlines() or ["no reason given"])[0][:120]
