"""Weight fingerprints: what a base model is, independent of where and how it is stored.

sha256 over the config (canonical JSON) and, for every tensor in name order, its name, dtype,
shape and the sha256 of its bytes. So it does not depend on the folder's name, on file names or
sharding, or on the order tensors were written in. Per-tensor digests come from the digest
cache: an unchanged base costs a stat per file.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from lora_core.model_files import ModelConfig, read_json_object

from .digests import DigestCache
from .errors import RegistryError

CONFIG_FILE = "config.json"
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")  # change with the tool, not the model


def sha256_file(path: Path) -> str:
    return DigestCache().sha256(Path(path))


@dataclass(frozen=True)
class BaseIdentity:
    """A base folder's weight fingerprint and its config.json, from one read of that file."""

    fingerprint: str
    config: ModelConfig


def fingerprint_weights(folder: str | Path, cache: DigestCache | None = None) -> str:
    """sha256 over config.json (canonical) and every tensor of every *.safetensors file in the folder."""
    return identify_base(folder, cache).fingerprint


def identify_base(folder: str | Path, cache: DigestCache | None = None) -> BaseIdentity:
    """The folder's fingerprint (see fingerprint_weights) and config (ModelConfig() when it has none)."""
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
    config = ModelConfig()
    if os.path.lexists(folder / CONFIG_FILE):
        raw = read_json_object(folder / CONFIG_FILE)
        config = ModelConfig.model_validate(raw)
        values = {k: v for k, v in raw.items() if k not in VOLATILE_CONFIG_KEYS}
        digest.update(json.dumps(values, sort_keys=True).encode())
    tensors = {}
    for path in files:
        for name, entry in cache.tensors(path).items():
            if name in tensors:
                raise RegistryError(f"{folder}: tensor {name!r} appears in two weight files; remove the stale shard")
            tensors[name] = entry
    for name in sorted(tensors):
        digest.update(json.dumps([name, *tensors[name]]).encode())
    return BaseIdentity(digest.hexdigest(), config)
