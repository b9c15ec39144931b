"""The one way loraops talks to S3: s3:// URIs parsed, clients with bounded timeouts, failures as one-line errors.

Settings come from the standard AWS environment or profile (AWS_ENDPOINT_URL, AWS_PROFILE, AWS_ACCESS_KEY_ID, ...);
credentials are never echoed into messages.
"""

import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple, TypedDict

from .errors import RegistryError, StoreError, StoreStalled, StoreUnavailable
from .faults import STORE_TIMEOUT, store_bound

SCHEME = "s3://"
S3Client = Any  # botocore builds the client class at run time; boto3 ships no type stubs
REJECTED = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "InvalidClientTokenId",
    "ExpiredToken",
}
CLIENTS: dict[tuple, S3Client] = {}  # shared_client's, by pool size and AWS settings
CLIENTS_LOCK = threading.Lock()
OVERLOADED = {"SlowDown", "Throttling", "RequestTimeout", "ServiceUnavailable", "InternalError"}  # worth a retry


class S3Location(NamedTuple):
    bucket: str
    key: str  # may be empty (the bucket itself) or a prefix


class CompletedPart(TypedDict):
    """One part of a multipart upload, as complete_multipart_upload takes it."""

    ETag: str
    PartNumber: int
    ChecksumSHA256: str


class Part(NamedTuple):
    number: int
    data: bytes
    recorded: str | None  # the part's sha256 as the digest cache recorded it
    trusted: bool  # recorded well after the file last changed: sent as the checksum without hashing the part


class ObjectHead(NamedTuple):
    bytes: int
    checksum: str | None  # the SHA-256 the store reports ('-N' dropped), None if it keeps none


def is_s3_uri(uri: str) -> bool:
    return uri.startswith(SCHEME)


def parse_s3_uri(uri: str, what: str = "S3 URI") -> S3Location:
    """'s3://bucket/some/key' -> S3Location('bucket', 'some/key'); `what` names the URI in the error."""
    if not is_s3_uri(uri):
        raise RegistryError(f"{what} {uri!r} is not an s3:// URI; use s3://bucket/key")
    bucket, _, key = uri.removeprefix(SCHEME).partition("/")
    if not bucket:
        raise RegistryError(f"{what} {uri!r} names no bucket; use s3://bucket/prefix")
    return S3Location(bucket, key)


def s3_client(connections: int = 10) -> S3Client:
    """A boto3 S3 client whose every call ends within store_bound().per_call; `connections`: how many
    open connections it keeps for threads that share it (beyond that, each extra one is closed after its request)."""
    import boto3
    from botocore.config import Config

    bound = store_bound()  # botocore's defaults (60 s read x 5 tries per call) took 20 minutes on a stalled store
    # Our own sha256 verification covers integrity, so stores that reject boto3's default
    # CRC headers (several S3-compatible servers) work unless the user asks otherwise.
    config = Config(
        request_checksum_calculation=os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
        response_checksum_validation=os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"),
        retries={"max_attempts": bound.attempts, "mode": "standard"},
        connect_timeout=bound.connect,
        read_timeout=bound.read,
        max_pool_connections=connections,
    )
    return boto3.session.Session().client("s3", config=config)


def shared_client(connections: int) -> S3Client:
    """One client per process, AWS settings and pool size: boto3 clients are thread-safe, and building one costs
    about 0.3 s of CPU (botocore loads its service model), paid once instead of per promotion of a fleet."""
    settings = sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_") or k == STORE_TIMEOUT)
    key = (connections, tuple(settings))
    with CLIENTS_LOCK:
        if key not in CLIENTS:
            CLIENTS[key] = s3_client(connections)
        return CLIENTS[key]


def read_object(uri: str) -> bytes:
    """The bytes of the object at s3://bucket/key."""
    bucket, key = parse_s3_uri(uri)

    def fetch() -> bytes:  # the body streams after the answer: its read can time out or break off too
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()

    body = call(uri, fetch, missing_ok=True)
    if body is None:
        raise StoreError(f"{uri}: no such object; check the path")
    return body


def object_etag(uri: str) -> str:
    """The ETag the store reports for the object at s3://bucket/key (one HEAD): changes when its bytes do."""
    bucket, key = parse_s3_uri(uri)
    response = call(uri, s3_client().head_object, missing_ok=True, Bucket=bucket, Key=key)
    if response is None:
        raise StoreError(f"{uri}: no such object; check the path")
    return response["ETag"]


def call(where: str, method: Callable[..., Any], *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
    """Run a boto3 call on `where` (an s3:// URI); turn its failures into one-line StoreErrors that name the fix.
    With `missing_ok`, a missing key (or multipart upload) answers None."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectTimeoutError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    try:
        return method(*args, **kwargs)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if missing_ok and code in ("NoSuchKey", "NoSuchUpload", "404"):
            return None
        raise _client_error(where, code, e) from None
    except S3UploadFailedError as e:
        raise _client_error(where, _code_in(str(e)), e) from None
    except NoCredentialsError:
        raise StoreError(
            f"no AWS credentials for {where}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        ) from None
    except (ReadTimeoutError, ConnectTimeoutError) as e:
        raise stalled(where, type(e).__name__) from None
    except BotoCoreError as e:
        raise StoreUnavailable(
            f"cannot reach {where} ({type(e).__name__}); check AWS_ENDPOINT_URL, that the store is up, and the network"
        ) from None


def stalled(where: str, what: str) -> StoreStalled:
    bound = store_bound()
    return StoreStalled(
        f"{where} did not answer: {bound.attempts} tries of {bound.connect:.2g} s to connect and {bound.read:.3g} s "
        f"to read timed out ({what}); check that the store is up and AWS_ENDPOINT_URL, or set {STORE_TIMEOUT} "
        f"(now {bound.total:.0f} s) for a slower one"
    )


def _client_error(where: str, code: str, error: Exception) -> StoreError:
    bucket = parse_s3_uri(where).bucket
    if code in ("NoSuchBucket", "404"):
        return StoreError(
            f"bucket {bucket!r} does not exist; create it (aws s3 mb s3://{bucket}) or fix the promotion target"
        )
    if code in REJECTED:
        return StoreError(
            f"credentials rejected by {where} ({code}); check AWS_ACCESS_KEY_ID/"
            f"AWS_SECRET_ACCESS_KEY or AWS_PROFILE and the bucket policy"
        )
    status = getattr(error, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if status >= 500 or code in OVERLOADED:
        return StoreUnavailable(
            f"{where}: the store answered {code or status}; it is overloaded or failing, try again later"
        )
    return StoreError(f"{where}: S3 error {code or type(error).__name__}; check the target and the store's logs")


def _code_in(message: str) -> str:
    """S3UploadFailedError flattens the ClientError into text: '... (InvalidAccessKeyId) when calling ...'."""
    start, end = message.rfind("("), message.rfind(")")
    return message[start + 1 : end] if 0 <= start < end else ""
