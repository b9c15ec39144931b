"""Safetensors files tensor by tensor: headers read without loading, tensors written as they come.

File layout: 8-byte little-endian header length N, N bytes of JSON
`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}` (offsets relative to
the end of the header), then the tensor bytes. Reading the header alone gives every tensor's
place, so untouched tensors are copied as byte ranges and a whole model never sits in memory.
"""

import json
import math
import os
import struct
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import WeightFileError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
COPY_CHUNK = 64 * 1024 * 1024
WRITE_AHEAD = 2  # tensors queued for the writer thread


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's place in a file: absolute byte offsets [start, end)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: str | Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """({name: TensorEntry}, metadata) of a safetensors file, checked against the file's length.

    A truncated or padded file is refused here, before anything reads past its end.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise WeightFileError(f"{path}: {size} bytes, too short for a safetensors file; re-save or re-download it")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            raise WeightFileError(
                f"{path}: header length {length} does not fit the file ({size} bytes); "
                "the file is truncated or not safetensors: re-save or re-download it"
            )
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, ValueError):
            raise WeightFileError(f"{path}: unreadable safetensors header; re-save or re-download the file") from None
    metadata = header.pop("__metadata__", None) or {}
    base, entries, data_end = 8 + length, {}, 0
    for name, raw in header.items():
        try:
            begin, end = raw["data_offsets"]
            entry = TensorEntry(name, raw["dtype"], tuple(raw["shape"]), base + begin, base + end)
        except (KeyError, TypeError, ValueError):
            raise WeightFileError(f"{path}: tensor {name!r} has a malformed header entry; re-save the file") from None
        if entry.dtype not in DTYPES or entry.nbytes != math.prod(entry.shape) * DTYPES[entry.dtype].itemsize:
            raise WeightFileError(
                f"{path}: tensor {name!r} ({entry.dtype}, {list(entry.shape)}) does not match its "
                f"{entry.nbytes} bytes; re-save the file"
            )
        entries[name] = entry
        data_end = max(data_end, entry.end)
    end = base
    for entry in sorted(entries.values(), key=lambda e: e.start):  # overlapping spans would make readers loop
        if entry.start < end:
            raise WeightFileError(
                f"{path}: tensor {entry.name!r} overlaps the data before it; the header is damaged: re-save the file"
            )
        end = entry.end
    if data_end != size and not (not entries and size == base):
        raise WeightFileError(
            f"{path}: the header describes {data_end} bytes but the file has {size}; the file is "
            "truncated or damaged: re-download or re-save it"
        )
    return entries, metadata


def read_tensor(f: BinaryIO, entry: TensorEntry) -> torch.Tensor:
    """The tensor at `entry` from an open binary file, as a new CPU tensor (positional reads: no shared offset)."""
    out = torch.empty(entry.nbytes, dtype=torch.uint8)  # not zero-filled: every byte is read into it
    view, done = out.numpy().data, 0  # a writable memoryview of `out`
    while done < entry.nbytes:
        n = os.preadv(f.fileno(), [view[done:]], entry.start + done)
        if not n:
            raise WeightFileError(f"{f.name}: ended while reading {entry.name!r}; the file is truncated")
        done += n
    return out.view(DTYPES[entry.dtype]).reshape(entry.shape)


class SafetensorsWriter:
    """Writes a safetensors file whose tensors are declared up front and then supplied in that order.

    Writes go to the disk from one background thread, in order, while the caller prepares the next
    tensor (at most WRITE_AHEAD tensors wait in memory). The file appears under its name only when
    every tensor was written (temp name + rename).
    """

    def __init__(
        self, path: str | Path, layout: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None
    ) -> None:
        self.path = Path(path)
        header: dict[str, Any] = {}  # the JSON header
        offset = 0
        for name, dtype, shape in layout:
            n = math.prod(shape) * DTYPES[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        if metadata:
            header["__metadata__"] = metadata
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
        self.pending = [
            (name, header[name]["data_offsets"][1] - header[name]["data_offsets"][0]) for name, _, _ in layout
        ]
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.file = open(self.tmp, "wb", buffering=0)  # unbuffered: kernel copies and writes share one offset
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="safetensors-writer")
        self.queued: deque[Future[None]] = deque()
        self._write_all(struct.pack("<Q", len(raw)) + raw)

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            view = view[self.file.write(view) :]

    def _next(self, name: str, nbytes: int) -> None:
        if not self.pending or self.pending[0] != (name, nbytes):
            expected = self.pending[0] if self.pending else "nothing"
            raise WeightFileError(f"{self.path}: wrote {name!r} ({nbytes} bytes) where {expected} was declared")
        self.pending.pop(0)

    def _queue(self, job: Callable[..., None], *args: Any) -> None:
        while len(self.queued) >= WRITE_AHEAD or (self.queued and self.queued[0].done()):
            self.queued.popleft().result()  # re-raises a failed write here
        self.queued.append(self.writer.submit(job, *args))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().contiguous().cpu()
        self._next(name, tensor.numel() * tensor.element_size())
        self._queue(self._write_all, tensor.reshape(-1).view(torch.uint8).numpy().data)

    def copy(self, name: str, source: BinaryIO, entry: TensorEntry) -> None:
        """Copy a tensor's bytes from an open source file without decoding them (kernel copy where possible)."""
        self._next(name, entry.nbytes)
        self._queue(self._copy_range, name, source, entry)

    def _copy_range(self, name: str, source: BinaryIO, entry: TensorEntry) -> None:
        left, position = entry.nbytes, entry.start
        while left:
            try:
                n = os.copy_file_range(source.fileno(), self.file.fileno(), min(left, COPY_CHUNK), position)
            except OSError:
                n = 0  # cross-filesystem or unsupported: fall back to read/write
            if not n:
                chunk = os.pread(source.fileno(), min(left, COPY_CHUNK), position)
                if not chunk:
                    raise WeightFileError(f"{source.name}: ended while copying {name!r}; the file is truncated")
                self._write_all(chunk)
                n = len(chunk)
            left, position = left - n, position + n

    def _drain(self) -> None:
        try:
            while self.queued:
                self.queued.popleft().result()
        finally:
            self.writer.shutdown(wait=True, cancel_futures=True)
            self.file.close()

    def close(self) -> None:
        try:
            self._drain()
        except BaseException:
            self.tmp.unlink(missing_ok=True)
            raise
        if self.pending:
            self.tmp.unlink(missing_ok=True)
            raise WeightFileError(f"{self.path}: {len(self.pending)} declared tensors were never written")
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._drain()
        except BaseException:
            pass  # the error that made us abort is the one to report
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "SafetensorsWriter":
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self.abort() if kind else self.close()
