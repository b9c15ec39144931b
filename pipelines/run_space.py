"""The disk space a run needs, estimated from its base's size before training starts (registry/free_space.py
checks it, and again before each large write).

A merged model is about the base's size (same tensors, same dtype); a run in merged mode writes it up to three
times on this machine: the merge output, the registered artifacts (embedded MLflow) and a promoted folder. The
adapter with its checkpoints (weights and AdamW's two moments) is counted at a tenth of the base, several times:
a generous bound for LoRA weights and saved modules such as a classifier head.
"""

from pathlib import Path

from registry import RegistrySettings
from registry.free_space import SpaceNeed, size_of
from registry.s3 import is_s3_uri

from .spec import TaskSpec

ADAPTER_SHARE = 10  # an adapter with its saved modules, at most 1/ADAPTER_SHARE of the base (estimate)
WORK_COPIES = 5  # adapter, best weights kept, checkpoint (weights + 2 moments)


def base_bytes(base_path: Path) -> int:
    return size_of(base_path, "*.safetensors")


def run_needs(spec: TaskSpec, settings: RegistrySettings, base_path: Path) -> list[SpaceNeed]:
    base = base_bytes(base_path)
    adapter = base // ADAPTER_SHARE
    merged = base if spec.promotion.mode == "merged" else 0
    needs = [SpaceNeed(settings.home / "work" / spec.task, WORK_COPIES * adapter + merged, "training and merge")]
    if settings.embedded:
        needs.append(SpaceNeed(settings.home / "mlartifacts", adapter + merged, "the registered artifacts"))
    target = spec.promotion.target or settings.promotion_target
    if spec.promotion.auto and not is_s3_uri(target):
        needs.append(SpaceNeed(Path(target.removeprefix("file://")), adapter + merged, "the promoted copy"))
    return needs
