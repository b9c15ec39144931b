"""File digests read once and cached by file identity: whole-file, per-part and per-tensor sha256."""

import hashlib
import os

import torch
from safetensors.torch import save_file

import registry.digests as digests
from lora_core.safetensors_io import read_header
from registry import fingerprint_weights
from registry.digests import DigestCache, digest_file


def test_one_read_gives_file_part_and_tensor_digests(tmp_path, monkeypatch):
    monkeypatch.setattr(digests, "MIN_PART", 2**20)
    save_file({"a": torch.randn(700, 1000), "empty": torch.empty(0), "b": torch.randn(3)}, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    found = digest_file(tmp_path / "w.safetensors", tensors=True)
    assert found.sha256 == hashlib.sha256(data).hexdigest() and found.bytes == len(data)
    assert list(found.parts) == [hashlib.sha256(data[i : i + 2**20]).hexdigest() for i in range(0, len(data), 2**20)]
    for name, entry in read_header(tmp_path / "w.safetensors")[0].items():
        assert found.tensors[name] == [
            entry.dtype,
            list(entry.shape),
            hashlib.sha256(data[entry.start : entry.end]).hexdigest(),
        ]


def test_unchanged_file_is_not_read_again_and_a_changed_one_is(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(1000))
    old = 1_600_000_000_000_000_000
    os.utime(path, ns=(old, old))  # not "racy": written long before it is hashed
    cache = DigestCache(tmp_path / "digests.sqlite")
    reads = []
    real = digests.digest_file
    monkeypatch.setattr(digests, "digest_file", lambda p, *args: reads.append(p) or real(p, *args))
    first = cache.get(path)
    assert DigestCache(tmp_path / "digests.sqlite").get(path) == first and len(reads) == 1  # a stat, no read
    path.write_bytes(os.urandom(1000))
    os.utime(path, ns=(old + 10**9, old + 10**9))
    assert cache.get(path).sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and len(reads) == 2


def test_fresh_files_are_hashed_again_until_their_mtime_is_safely_past(tmp_path, monkeypatch):
    """A same-size rewrite within the filesystem's timestamp granularity keeps the mtime: never trust those."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 100)
    cache = DigestCache(tmp_path / "digests.sqlite")
    cache.get(path)
    stat = path.stat()
    path.write_bytes(b"b" * 100)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: only the bytes differ
    assert cache.get(path).sha256 == hashlib.sha256(b"b" * 100).hexdigest()


def test_base_fingerprint_cached_per_file_and_invalidated_by_a_changed_shard(tmp_path, monkeypatch):
    from conftest import build

    build("llama").save_pretrained(tmp_path / "base", max_shard_size="20KB")
    old = 1_600_000_000_000_000_000
    shards = sorted((tmp_path / "base").glob("*.safetensors"))
    for shard in shards:
        os.utime(shard, ns=(old, old))
    cache = DigestCache(tmp_path / "digests.sqlite")
    reads = []
    real = digests.digest_file
    monkeypatch.setattr(digests, "digest_file", lambda p, *args: reads.append(p.name) or real(p, *args))
    first = fingerprint_weights(tmp_path / "base", cache)
    assert fingerprint_weights(tmp_path / "base", cache) == first and len(reads) == len(shards)
    entries, _ = read_header(shards[0])
    entry = max(entries.values(), key=lambda e: e.nbytes)
    with open(shards[0], "r+b") as f:
        f.seek(entry.start)
        f.write(bytes([f.read(1)[0] ^ 1]))
    os.utime(shards[0], ns=(old + 10**9, old + 10**9))
    assert fingerprint_weights(tmp_path / "base", cache) != first
    assert reads[len(shards) :] == [shards[0].name]  # only the changed shard was read again
