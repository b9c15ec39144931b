"""S3-compatible object storage as a promotion target (boto3 through s3.py): verified uploads in parts, HEAD-only
"already there?", server-side copies verified by the store's SHA-256, stale multipart uploads aborted.

Each file is read once: that pass hashes each part (SHA-256, which the store checks on receipt and combines into the
checksum HEAD reports) and the whole file for the manifest's sha256, unless the digest cache vouches for the file.
SHA-256 and not CRC64NVME: the manifest is sha256 and the digest cache holds the part digests, so "already there?"
is one HEAD; measured on moto (bench/promotion.py), CRC64NVME was not faster end to end. Stores: AWS S3 checks
SHA-256 on each PUT and part and reports "<sha256 of part digests>-N"; CRC64NVME only full-object. MinIO does the
same (CRC64NVME in 2025 releases); older MinIO, Ceph RGW before Squid and others report none: uploads are then read
back (logged once). moto keeps the checksums it is sent unchecked and computes the composite (or CRC64NVME, with
awscrt where it runs) from the bytes it got, so a changed part shows on HEAD.
"""

import hashlib
from concurrent.futures import Future, wait
from pathlib import Path

from .digests import CHUNK, DigestCache, FileDigest, part_size
from .errors import IntegrityError, StoreStalled
from .manifest import FileEntry
from .s3 import CompletedPart, ObjectHead, Part, S3Client, call, is_s3_uri, parse_s3_uri, shared_client
from .stores import FILES_AT_ONCE, Known, Progress, TransferSlots, b64, log, mismatch


class S3Store:
    """s3://bucket/prefix: one PUT up to part_size(file), else a multipart upload whose parts go out in parallel,
    each holding one of `slots` (its own, or a bound shared with other stores) while it is read and sent."""

    fallback_said = False  # "no additional checksums here" is logged once per process

    def __init__(
        self, bucket: str, prefix: str = "", client: S3Client | None = None, slots: TransferSlots | None = None
    ):
        from boto3.s3.transfer import TransferConfig

        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.slots = slots or TransferSlots()
        # requests that hold no slot (HEAD, completion) come from up to FILES_AT_ONCE threads per slot's task
        self.client = client or shared_client(self.slots.jobs * (FILES_AT_ONCE + 1))
        self.transfer = TransferConfig(multipart_chunksize=16 * 1024 * 1024)  # downloads
        self.gave_up: StoreStalled | None = None  # a call that timed out: the calls after it fail at once

    def __repr__(self) -> str:
        return f"S3Store({self.uri()})"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str = "") -> str:
        path = self._key(key) if key else self.prefix
        return f"s3://{self.bucket}/{path}".rstrip("/")

    def check(self) -> None:
        self._call(self.client.head_bucket, Bucket=self.bucket)

    def head(self, key: str) -> ObjectHead | None:
        response = self._call(
            self.client.head_object, missing_ok=True, Bucket=self.bucket, Key=self._key(key), ChecksumMode="ENABLED"
        )
        if response is None:
            return None
        checksum = response.get("ChecksumSHA256")
        return ObjectHead(response["ContentLength"], checksum.split("-")[0] if checksum else None)

    def present(self, key: str, entry: FileEntry, digests: DigestCache, source: Path | None = None) -> bool:
        """One HEAD: the size and the store's own checksum match the file (full-object, or composite of parts)."""

        def composite() -> str | None:
            local = digests.get(source) if source is not None and source.is_file() else None
            return local.s3_checksum().split("-")[0] if local and local.sha256 == entry.sha256 else None

        return self._holds(key, entry, composite)

    def _holds(self, key: str, entry: FileEntry, composite) -> bool:
        """The object at `key` is `entry`: by the checksum the store reports (the file's, or `composite()` of its
        parts), or, where the store keeps no checksums, by reading it back (said once in the log)."""
        info = self.head(key)
        if info is None or info.bytes != entry.bytes:
            return False
        if info.checksum is None:
            if not S3Store.fallback_said:
                log.warning("%s reports no SHA-256 checksums; verifying uploads by reading them back", self.uri())
                S3Store.fallback_said = True
            return self.read_back(key) == entry
        return info.checksum == b64(entry.sha256) or info.checksum == composite()

    def read_back(self, key: str) -> FileEntry | None:
        response = self._call(self.client.get_object, missing_ok=True, Bucket=self.bucket, Key=self._key(key))
        if response is None:
            return None
        digest, size = hashlib.sha256(), 0
        for chunk in response["Body"].iter_chunks(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return FileEntry(sha256=digest.hexdigest(), bytes=size)

    def upload(
        self, source: Path, key: str, entry: FileEntry, progress: Progress | None = None, known: Known | None = None
    ) -> FileDigest:
        """Send `source` read once, with SHA-256 checksums the store verifies; then confirm with one HEAD.

        `known`: the file's digests from the digest cache. Trusted ones (hashed well after the file last changed,
        at registration) are the checksums sent and nothing is hashed: the store's check of each part ties the
        bytes it received to the bytes hashed then. Others are confirmed part by part as the parts are hashed for
        sending, which spares the second pass over the whole file; with none, that pass is made alongside.
        """
        step = part_size(entry.bytes)
        if known and (known.digest.sha256 != entry.sha256 or len(known.digest.parts) != -(-entry.bytes // step)):
            known = None
        with open(source, "rb") as f:
            if entry.bytes <= step:
                digest = self._put_single(f, source, key, entry, progress)
            else:
                digest = self._put_multipart(f, source, key, entry, step, progress, known)
        self.verify(key, digest, entry)
        return digest

    def verify(self, key: str, digest: FileDigest, entry: FileEntry) -> None:
        if not self._holds(key, entry, lambda: digest.s3_checksum().split("-")[0]):
            raise IntegrityError(
                f"{self.uri(key)}: the store does not hold {entry.bytes} bytes with sha256 "
                f"{entry.sha256[:12]}... after the upload; the store altered it, promotion stopped"
            )

    def _put_single(self, f, source: Path, key: str, entry: FileEntry, progress: Progress | None) -> FileDigest:
        with self.slots.free:
            data = f.read()
            sha = hashlib.sha256(data).hexdigest()
            if sha != entry.sha256 or len(data) != entry.bytes:
                raise mismatch(source, sha, entry)
            self._call(
                self.client.put_object,
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=b64(sha),
                Metadata={"sha256": sha},
            )
        if progress:
            progress(len(data))
        return FileDigest(sha, len(data), (sha,))

    def _put_multipart(
        self,
        f,
        source: Path,
        key: str,
        entry: FileEntry,
        step: int,
        progress: Progress | None,
        known: Known | None = None,
    ) -> FileDigest:
        created = self._call(
            self.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=self._key(key),
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": entry.sha256},
        )
        upload_id, whole = created["UploadId"], hashlib.sha256()
        futures: list[Future[tuple[CompletedPart, str]]] = []
        try:
            for number in range(1, -(-entry.bytes // step) + 1):
                if any(x.done() and x.exception() for x in futures):
                    break  # a part failed: read no more, its error is raised below
                self.slots.free.acquire()  # before the read: parts in memory stay within the bound; _put_part frees it
                try:
                    data = f.read(step)
                    if known is None:
                        whole.update(data)  # nothing recorded: this thread hashes the file, senders the parts
                    part = Part(
                        number,
                        data,
                        known.digest.parts[number - 1] if known else None,
                        known is not None and known.trusted,
                    )
                    futures.append(self.slots.pool.submit(self._put_part, source, key, upload_id, part, progress))
                except BaseException:
                    self.slots.free.release()
                    raise
            parts = [x.result() for x in futures]
            if known is None and whole.hexdigest() != entry.sha256:
                raise mismatch(source, whole.hexdigest(), entry)
            self._call(
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                MultipartUpload={"Parts": [p for p, _ in parts]},
            )
        except BaseException:
            wait(futures)  # parts in flight end before the upload is aborted, or they would outlive it
            self.abort(key, upload_id)
            raise
        return FileDigest(entry.sha256, entry.bytes, tuple(h for _, h in parts))

    def _put_part(
        self, source: Path, key: str, upload_id: str, part: Part, progress: Progress | None
    ) -> tuple[CompletedPart, str]:
        try:
            sha = part.recorded if part.trusted and part.recorded else hashlib.sha256(part.data).hexdigest()
            if part.recorded is not None and sha != part.recorded:
                raise IntegrityError(
                    f"{source}: part {part.number} reads differently from when the file was hashed; the local copy "
                    f"changed, nothing was published from it"
                )
            response = self._call(
                self.client.upload_part,
                Bucket=self.bucket,
                Key=self._key(key),
                UploadId=upload_id,
                PartNumber=part.number,
                Body=part.data,
                ChecksumSHA256=b64(sha),
            )
        finally:
            self.slots.free.release()
        if progress:
            progress(len(part.data))
        return CompletedPart(ETag=response["ETag"], PartNumber=part.number, ChecksumSHA256=b64(sha)), sha

    def abort(self, key: str, upload_id: str) -> None:
        if self.gave_up:
            return  # a stalled store would stall this too; the next promotion aborts it (abort_stale)
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self._key(key), UploadId=upload_id)
        except Exception:  # the upload failed already; the next promotion aborts what is left (abort_stale)
            pass

    def abort_stale(self, prefix: str) -> None:
        """Abort incomplete multipart uploads under `prefix` (left by a killed promotion)."""
        listed = self._call(self.client.list_multipart_uploads, Bucket=self.bucket, Prefix=self._key(prefix))
        for upload in listed.get("Uploads", []):  # one that another machine finished or aborted meanwhile is gone
            self._call(
                self.client.abort_multipart_upload,
                missing_ok=True,
                Bucket=self.bucket,
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )

    def can_copy_from(self, uri: str) -> bool:
        """Objects in S3 (an MLflow server writing artifacts straight to the bucket) are copied server-side."""
        return is_s3_uri(uri)

    def copy_from(self, source_uri: str, key: str, entry: FileEntry) -> bool:
        """Server-side copy of s3://bucket/key into this store, verified by the SHA-256 the store computes of the copy.

        False where a single CopyObject cannot do it (over 5 GB) or the store computes no checksum of it:
        then the caller uploads the file instead.
        """
        bucket, source_key = parse_s3_uri(source_uri)
        if entry.bytes > 5 * 10**9:
            return False
        with self.slots.free:
            response = self._call(
                self.client.copy_object,
                Bucket=self.bucket,
                Key=self._key(key),
                CopySource={"Bucket": bucket, "Key": source_key},
                ChecksumAlgorithm="SHA256",
                MetadataDirective="REPLACE",
                Metadata={"sha256": entry.sha256},
            )
        copied = response.get("CopyObjectResult", {}).get("ChecksumSHA256")
        if copied is None:
            return False
        if copied.split("-")[0] != b64(entry.sha256):
            self._call(self.client.delete_object, Bucket=self.bucket, Key=self._key(key))
            raise IntegrityError(
                f"{source_uri}: the store's SHA-256 of the copy is not the manifest's "
                f"{entry.sha256[:12]}...; the registered artifact is damaged, promotion stopped"
            )
        return True

    def download(self, key: str, dest: Path) -> None:
        self._call(self.client.download_file, self.bucket, self._key(key), str(dest), Config=self.transfer)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        response = self._call(self.client.get_object, missing_ok=True, Bucket=self.bucket, Key=self._key(key))
        return None if response is None else response["Body"].read()

    def _call(self, method, *args, missing_ok: bool = False, **kwargs):
        """`call`, bounded as a whole: after one call timed out (StoreStalled), every later one fails at once, so a
        stalled store costs one call's bound plus the calls already in flight (faults.StoreBound)."""
        if self.gave_up:
            raise self.gave_up
        try:
            return call(self.uri(), method, *args, missing_ok=missing_ok, **kwargs)
        except StoreStalled as e:
            self.gave_up = e
            raise
