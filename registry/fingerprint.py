"""Content fingerprints: sha256 of files, of a model's weights, and of a folder's manifest.

A weight fingerprint hashes each tensor's name, dtype, shape and bytes in name order, read from
the safetensors headers, plus the model config as canonical JSON. So it does not depend on the
folder's name, on file names or sharding, or on the order tensors were written in.
"""

import hashlib
import json
import struct
from pathlib import Path

from .errors import RegistryError

CHUNK = 8 * 1024 * 1024
CONFIG_FILE = "config.json"
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")  # change with the tool, not the model


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint_weights(folder: str | Path) -> str:
    """sha256 over config.json (canonical) and every tensor of every *.safetensors file in the folder."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        hint = f" (found {', '.join(pickles)}: pickle files are not read; save with safe_serialization=True)" if pickles else ""
        raise RegistryError(f"{folder}: no *.safetensors weights to fingerprint{hint}")
    digest = hashlib.sha256()
    config = folder / CONFIG_FILE
    if config.exists():
        values = {k: v for k, v in json.loads(config.read_text()).items() if k not in VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(values, sort_keys=True).encode())
    tensors = {}
    for path in files:
        for name, (dtype, shape, start, end) in _safetensors_index(path).items():
            if name in tensors:
                raise RegistryError(f"{folder}: tensor {name!r} appears in two weight files; remove the stale shard")
            tensors[name] = (path, dtype, shape, start, end)
    for name in sorted(tensors):
        path, dtype, shape, start, end = tensors[name]
        digest.update(json.dumps([name, dtype, shape]).encode())
        with open(path, "rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining:
                chunk = f.read(min(CHUNK, remaining))
                digest.update(chunk)
                remaining -= len(chunk)
    return digest.hexdigest()


def _safetensors_index(path: Path) -> dict[str, tuple[str, list[int], int, int]]:
    """{tensor name: (dtype, shape, absolute start, absolute end)} from a safetensors header."""
    with open(path, "rb") as f:
        try:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        except (struct.error, ValueError):
            raise RegistryError(f"{path}: not a safetensors file (unreadable header); re-save the weights") from None
    header.pop("__metadata__", None)
    offset = 8 + size
    return {name: (entry["dtype"], entry["shape"], offset + entry["data_offsets"][0], offset + entry["data_offsets"][1])
            for name, entry in header.items()}
