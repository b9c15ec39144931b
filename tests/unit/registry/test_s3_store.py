"""S3Store's upload path against a stand-in client (no server): one transfer bound shared by stores, and how often a
file's bytes are hashed by what the digest cache knows of it."""

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from registry.digests import DigestCache, FileDigest
from registry.errors import IntegrityError
from registry.manifest import FileEntry
from registry.s3_store import S3Store
from registry.stores import Known, TransferSlots, b64

PART = 1024


class FakeS3:
    """Records parts as a store would receive them and counts the part uploads in flight at once."""

    def __init__(self):
        self.lock, self.now, self.most = threading.Lock(), 0, 0
        self.parts: dict[int, tuple[bytes, str]] = {}
        self.completed, self.aborted = 0, 0

    def create_multipart_upload(self, **kwargs):
        return {"UploadId": "u"}

    def upload_part(self, **kwargs):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.01)
        with self.lock:
            self.now -= 1
            self.parts[kwargs["PartNumber"]] = (kwargs["Body"], kwargs["ChecksumSHA256"])
        return {"ETag": f'"{kwargs["PartNumber"]}"'}

    def complete_multipart_upload(self, **kwargs):
        self.completed += 1
        return {}

    def abort_multipart_upload(self, **kwargs):
        self.aborted += 1


@pytest.fixture
def small_parts(monkeypatch):
    monkeypatch.setattr("registry.s3_store.part_size", lambda nbytes: PART)
    monkeypatch.setattr(S3Store, "verify", lambda *a: None)


@pytest.fixture
def hashed(monkeypatch):
    """Bytes hashed with SHA-256 (hashlib's, counted), in all."""
    seen = [0]
    real = hashlib.sha256

    def counting(data=b""):
        digest = real(data)
        seen[0] += len(data)
        update = digest.update

        class Counted:
            def update(self, more):
                seen[0] += len(more)
                update(more)

            def hexdigest(self):
                return digest.hexdigest()

        return Counted()

    monkeypatch.setattr("registry.s3_store.hashlib.sha256", counting)
    return seen


def weights(tmp_path, parts: int = 10) -> tuple:
    data = os.urandom(PART * parts)
    (tmp_path / "w.safetensors").write_bytes(data)
    return tmp_path / "w.safetensors", FileEntry(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data)), data


def part_digests(data: bytes) -> FileDigest:
    parts = tuple(hashlib.sha256(data[i : i + PART]).hexdigest() for i in range(0, len(data), PART))
    return FileDigest(hashlib.sha256(data).hexdigest(), len(data), parts)


def test_stores_sharing_transfer_slots_never_exceed_the_bound(tmp_path, small_parts):
    path, entry, _ = weights(tmp_path)
    client = FakeS3()
    with TransferSlots(3) as slots, ThreadPoolExecutor(4) as uploads:
        stores = [S3Store("b", f"p{i}", client=client, slots=slots) for i in range(4)]
        digests = list(uploads.map(lambda store: store.upload(path, "w", entry), stores))
    assert client.most == 3  # 40 parts of 4 uploads at once, never more than the 3 slots
    assert all(len(d.parts) == 10 and d.sha256 == entry.sha256 for d in digests)


@pytest.mark.parametrize("trusted, passes", [(None, 2), (False, 1), (True, 0)])
def test_a_file_is_hashed_as_often_as_the_digest_cache_requires(tmp_path, small_parts, hashed, trusted, passes):
    """Nothing recorded: the whole file and each part (two passes). Recorded too soon after the file changed: the
    parts only, each checked against its record (one pass). Trusted: none; the recorded part digests are sent."""
    path, entry, data = weights(tmp_path)
    client = FakeS3()
    recorded = part_digests(data)
    known = None if trusted is None else Known(recorded, trusted)
    hashed[0] = 0
    S3Store("b", client=client).upload(path, "w", entry, known=known)
    assert hashed[0] == passes * len(data)
    assert b"".join(client.parts[n][0] for n in sorted(client.parts)) == data and client.completed == 1
    assert [client.parts[n][1] for n in sorted(client.parts)] == [b64(h) for h in recorded.parts]


def test_a_part_that_changed_since_it_was_recorded_is_refused_and_nothing_completes(tmp_path, small_parts):
    path, entry, data = weights(tmp_path)
    recorded = part_digests(data)
    changed = bytearray(data)
    changed[5 * PART + 7] ^= 1  # same size, one byte in part 6
    path.write_bytes(changed)
    client = FakeS3()
    with pytest.raises(IntegrityError, match="part 6 reads differently from when the file was hashed"):
        S3Store("b", client=client).upload(path, "w", entry, known=Known(recorded, False))
    assert client.completed == 0 and client.aborted == 1 and 6 not in client.parts


def test_recorded_digests_come_back_before_they_are_trusted(tmp_path):
    cache = DigestCache(tmp_path / "d.sqlite")
    path, entry, _ = weights(tmp_path)
    cache.get(path)  # hashed right after it was written: racy
    assert cache.cached(path) is None and cache.recorded(path).sha256 == entry.sha256


class Finished(FakeS3):
    """Lists two uploads left by killed promotions, one of which another machine finishes before it is aborted."""

    def list_multipart_uploads(self, **kwargs):
        return {"Uploads": [{"Key": f"{kwargs['Prefix']}/gone", "UploadId": "1"}, {"Key": "x", "UploadId": "2"}]}

    def abort_multipart_upload(self, **kwargs):
        from botocore.exceptions import ClientError

        if kwargs["UploadId"] == "1":
            raise ClientError({"Error": {"Code": "NoSuchUpload"}}, "AbortMultipartUpload")
        if kwargs["UploadId"] == "denied":
            raise ClientError({"Error": {"Code": "AccessDenied"}}, "AbortMultipartUpload")
        super().abort_multipart_upload(**kwargs)


def test_an_upload_gone_before_its_abort_is_passed_over_and_other_refusals_are_one_line():
    from registry.errors import StoreError

    client = Finished()
    S3Store("b", "p", client=client).abort_stale("task")
    assert client.aborted == 1  # the one still there
    client.list_multipart_uploads = lambda **kwargs: {"Uploads": [{"Key": "k", "UploadId": "denied"}]}
    with pytest.raises(StoreError, match="credentials rejected by s3://b"):
        S3Store("b", "p", client=client).abort_stale("task")
