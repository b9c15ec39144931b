"""Artifact stores with one interface: a local folder and S3-compatible object storage (boto3).

Keys are POSIX paths below the store's root/prefix. S3 settings come from the standard AWS
environment or profile (AWS_ENDPOINT_URL, AWS_PROFILE, AWS_ACCESS_KEY_ID, ...); credentials are
never echoed into messages or records.
"""

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import StoreError
from .fingerprint import CHUNK
from .manifest import FileEntry

Progress = Callable[[int], None]


class LocalStore:
    """A folder with the same layout as the bucket; writes land atomically (temp file + rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({self.root})"

    def uri(self, key: str = "") -> str:
        return str(self.root / key) if key else str(self.root)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"promotion target {self.root} cannot be created ({e.strerror}); pick a writable folder") from None

    def checksum(self, key: str) -> FileEntry | None:
        path = self.root / key
        if not path.is_file():
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        return FileEntry(sha256=digest.hexdigest(), bytes=path.stat().st_size)

    def upload(self, source: Path, key: str, entry: FileEntry, progress: Progress | None = None) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".upload-", delete=False) as tmp:
            with open(source, "rb") as f:
                while chunk := f.read(CHUNK):
                    tmp.write(chunk)
                    if progress:
                        progress(len(chunk))
        os.replace(tmp.name, dest)

    def download(self, key: str, dest: Path) -> None:
        source = self.root / key
        if not source.is_file():
            raise StoreError(f"{source}: missing from the promotion target; promote the version again")
        shutil.copyfile(source, dest)

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".upload-{dest.name}")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def get_bytes(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None


class S3Store:
    """s3://bucket/prefix through boto3's transfer manager (multipart above `multipart_threshold`)."""

    def __init__(self, bucket: str, prefix: str = "", multipart_threshold: int = 64 * 1024 * 1024, client=None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config
        self.bucket, self.prefix = bucket, prefix.strip("/")
        # Our own sha256 verification covers integrity, so stores that reject boto3's default
        # CRC headers (several S3-compatible servers) work unless the user asks otherwise.
        config = Config(
            request_checksum_calculation=os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
            response_checksum_validation=os.environ.get("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"),
            retries={"max_attempts": 5, "mode": "standard"})
        self.client = client or boto3.session.Session().client("s3", config=config)
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=max(
            5 * 1024 * 1024, multipart_threshold // 4))

    def __repr__(self) -> str:
        return f"S3Store({self.uri()})"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str = "") -> str:
        path = self._key(key) if key else self.prefix
        return f"s3://{self.bucket}/{path}".rstrip("/")

    def check(self) -> None:
        self._call(self.client.head_bucket, Bucket=self.bucket)

    def checksum(self, key: str) -> FileEntry | None:
        response = self._call(self.client.get_object, missing_ok=True, Bucket=self.bucket, Key=self._key(key))
        if response is None:
            return None
        digest, size = hashlib.sha256(), 0
        for chunk in response["Body"].iter_chunks(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return FileEntry(sha256=digest.hexdigest(), bytes=size)

    def upload(self, source: Path, key: str, entry: FileEntry, progress: Progress | None = None) -> None:
        self._call(self.client.upload_file, str(source), self.bucket, self._key(key),
                   ExtraArgs={"Metadata": {"sha256": entry.sha256}}, Config=self.transfer, Callback=progress)

    def download(self, key: str, dest: Path) -> None:
        self._call(self.client.download_file, self.bucket, self._key(key), str(dest), Config=self.transfer)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        response = self._call(self.client.get_object, missing_ok=True, Bucket=self.bucket, Key=self._key(key))
        return None if response is None else response["Body"].read()

    def _call(self, method, *args, missing_ok: bool = False, **kwargs):
        """Run a boto3 call; turn its failures into one-line StoreErrors that name the fix."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
        try:
            return method(*args, **kwargs)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if missing_ok and code in ("NoSuchKey", "404"):
                return None
            raise self._client_error(code, e) from None
        except S3UploadFailedError as e:
            raise self._client_error(_code_in(str(e)), e) from None
        except NoCredentialsError:
            raise StoreError(f"no AWS credentials for {self.uri()}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE") from None
        except BotoCoreError as e:
            raise StoreError(f"cannot reach {self.uri()} ({type(e).__name__}); check AWS_ENDPOINT_URL and the network") from None

    def _client_error(self, code: str, error: Exception) -> StoreError:
        if code in ("NoSuchBucket", "404"):
            return StoreError(f"bucket {self.bucket!r} does not exist; create it (aws s3 mb s3://{self.bucket}) "
                              f"or fix the promotion target")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidClientTokenId",
                    "ExpiredToken"):
            return StoreError(f"credentials rejected by {self.uri()} ({code}); check AWS_ACCESS_KEY_ID/"
                              f"AWS_SECRET_ACCESS_KEY or AWS_PROFILE and the bucket policy")
        return StoreError(f"{self.uri()}: S3 error {code or type(error).__name__}; check the target and the store's logs")


def _code_in(message: str) -> str:
    """S3UploadFailedError flattens the ClientError into text: '... (InvalidAccessKeyId) when calling ...'."""
    start, end = message.rfind("("), message.rfind(")")
    return message[start + 1:end] if 0 <= start < end else ""


def open_store(target: str | Path) -> LocalStore | S3Store:
    """'s3://bucket/prefix' -> S3Store; a path or file:// URI -> LocalStore."""
    target = str(target)
    if target.startswith("s3://"):
        bucket, _, prefix = target[len("s3://"):].partition("/")
        if not bucket:
            raise StoreError(f"{target!r} names no bucket; use s3://bucket/prefix")
        return S3Store(bucket, prefix)
    if "://" in target and not target.startswith("file://"):
        raise StoreError(f"{target!r}: unsupported promotion target; use s3://bucket/prefix or a local folder")
    return LocalStore(target.removeprefix("file://"))
