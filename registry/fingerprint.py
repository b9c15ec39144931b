"""Weight fingerprints: what a base model is, independent of where and how it is stored.

sha256 over the config (canonical JSON) and, for every tensor in name order, its name, dtype,
shape and the sha256 of its bytes. So it does not depend on the folder's name, on file names or
sharding, or on the order tensors were written in. Per-tensor digests come from the digest
cache: an unchanged base costs a stat per file.
"""

import hashlib
import json
import os
from pathlib import Path

from lora_core.model_files import read_json_object

from .digests import DigestCache
from .errors import RegistryError

CONFIG_FILE = "config.json"
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")  # change with the tool, not the model


def sha256_file(path: Path) -> str:
    return DigestCache().sha256(Path(path))


def fingerprint_weights(folder: str | Path, cache: DigestCache | None = None) -> str:
    """sha256 over config.json (canonical) and every tensor of every *.safetensors file in the folder."""
    folder = Path(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.bin"))
        hint = (
            f" (found {', '.join(pickles)}: pickle files are not read; save with safe_serialization=True)"
            if pickles
            else ""
        )
        raise RegistryError(f"{folder}: no *.safetensors weights to fingerprint{hint}")
    cache = cache or DigestCache()
    digest = hashlib.sha256()
    config = folder / CONFIG_FILE
    if os.path.lexists(config):
        values = {k: v for k, v in read_json_object(config).items() if k not in VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(values, sort_keys=True).encode())
    tensors = {}
    for path in files:
        for name, entry in cache.tensors(path).items():
            if name in tensors:
                raise RegistryError(f"{folder}: tensor {name!r} appears in two weight files; remove the stale shard")
            tensors[name] = entry
    for name in sorted(tensors):
        digest.update(json.dumps([name, *tensors[name]]).encode())
    return digest.hexdigest()
