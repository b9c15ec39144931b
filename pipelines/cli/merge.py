"""`loraops merge BASE_DIR ADAPTER_DIR OUT_DIR`: a PEFT-format adapter folded into its base on disk, shard by shard."""

import os
import time
from pathlib import Path

from lora_core import LoraError
from lora_core.checkpoint_merge import MergeReport, merge_checkpoint
from lora_core.errors import ModelFileError
from lora_core.model_files import read_json_object
from registry import BaseMismatchError, RegistrySettings, fingerprint_weights
from registry.digests import DigestCache
from registry.manifest import MANIFEST_FILE


def check_recorded_base(base_dir: Path, adapter_dir: Path) -> None:
    """An adapter fetched from the registry carries manifest.json with its base's fingerprint: check it."""
    manifest = adapter_dir / MANIFEST_FILE
    if not os.path.lexists(manifest):
        return
    expected = read_json_object(manifest, "fetch the adapter again").get("base_fingerprint")
    if expected is not None and not isinstance(expected, str):
        raise ModelFileError(f"{manifest}: base_fingerprint is not text; fetch the adapter again")
    actual = fingerprint_weights(base_dir, DigestCache(RegistrySettings.from_env().digests))
    if expected and actual != expected:
        raise BaseMismatchError(
            f"{adapter_dir} was trained on a base with fingerprint {expected[:12]}, but {base_dir} "
            f"has {actual[:12]}; merge onto the base it was trained on"
        )


def merge_command(base_dir: str, adapter_dir: str, out_dir: str, print_=print) -> MergeReport:
    base, adapter = Path(base_dir), Path(adapter_dir)
    for what, folder in (("base", base), ("adapter", adapter)):
        if not folder.is_dir():
            raise LoraError(f"{what} folder {folder} does not exist; give the folder path")
    check_recorded_base(base, adapter)
    started = time.perf_counter()
    report = merge_checkpoint(base, adapter, out_dir)
    print_(
        f"merged {len(report.merged)} weights into {len(report.shards)} shard(s), {report.bytes / 1e9:.2f} GB, "
        f"in {time.perf_counter() - started:.1f}s: {out_dir}"
    )
    return report
