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

from .errors import ModelFileError, WeightFileError
from .model_files import open_regular, parse_json_object

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
FIX = "re-save or re-download the file"


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
    """({name: TensorEntry}, metadata) of a safetensors file, every field checked against the format and the file.

    Refused with one line naming the file and what is wrong: not a regular file, a header length that does not fit
    the file, a header that is not a JSON object or nests too deeply, metadata that is not text to text, an entry
    whose dtype is unknown, whose shape is not a list of non-negative integers or whose data_offsets fall outside
    the data, disagree with dtype and shape, or overlap another tensor's; a truncated or padded file.
    """
    path = Path(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) < 8:
            raise WeightFileError(f"{path}: {size} bytes, too short for a safetensors file; {FIX}")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            raise WeightFileError(
                f"{path}: header length {length} does not fit the file ({size} bytes); "
                f"the file is truncated or not safetensors: {FIX}"
            )
        raw = f.read(length)
    try:
        header = parse_json_object(raw, f"{path} (safetensors header)", FIX)
    except ModelFileError as e:
        raise WeightFileError(str(e)) from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise WeightFileError(f"{path}: __metadata__ is not a map of text to text; {FIX}")
    base = 8 + length
    entries = {name: _entry(path, name, raw_entry, base, size) for name, raw_entry in header.items()}
    end = base
    for entry in sorted(entries.values(), key=lambda e: e.start):  # overlapping spans would make readers loop
        if entry.start < end:
            raise WeightFileError(f"{path}: tensor {entry.name!r} overlaps the data before it; {FIX}")
        end = entry.end
    if end != size and not (not entries and size == base):
        raise WeightFileError(
            f"{path}: the header describes {end} bytes but the file has {size}; the file is truncated or damaged: {FIX}"
        )
    return entries, metadata


def _entry(path: Path, name: str, raw: Any, base: int, size: int) -> TensorEntry:
    """One header entry {dtype, shape, data_offsets} as a TensorEntry, each field checked."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(raw, dict):
        raise WeightFileError(f"{where}: the entry is {type(raw).__name__}, not an object; {FIX}")
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        what = f"dtype {dtype!r} is not one of {', '.join(DTYPES)}" if isinstance(dtype, str) else "dtype is not text"
        raise WeightFileError(f"{where}: {what}; {FIX}")
    if not isinstance(shape, list) or not all(_count(n) for n in shape):
        raise WeightFileError(f"{where}: shape {str(shape)[:40]} is not a list of non-negative integers; {FIX}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(map(_count, offsets)):
        raise WeightFileError(f"{where}: data_offsets {str(offsets)[:40]} is not [begin, end]; {FIX}")
    begin, end = offsets
    if not begin <= end <= size - base:
        raise WeightFileError(
            f"{where}: data_offsets [{begin}, {end}] fall outside the file's {size - base} bytes of data "
            f"(truncated or damaged); {FIX}"
        )
    if end - begin != math.prod(shape) * DTYPES[dtype].itemsize:
        raise WeightFileError(f"{where}: {dtype} {shape} does not match its {end - begin} bytes; {FIX}")
    return TensorEntry(name, dtype, tuple(shape), base + begin, base + end)


def _count(value: Any) -> bool:
    """A non-negative int that is not a bool (JSON true would pass isinstance(int))."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, by name, after its header passed read_header's checks."""
    entries, _ = read_header(path)
    with open_regular(path) as f:
        return {name: read_tensor(f, entry) for name, entry in entries.items()}


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
