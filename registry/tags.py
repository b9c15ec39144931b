"""The tag schema: what a base or adapter version records in MLflow, and records read back from the tags.

Every tag loraops writes starts with `loraops.`; DESIGN.md lists the version tags users rely on.
"""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TypeVar

from mlflow.entities.model_registry import ModelVersion
from pydantic import ValidationError

from lora_core.peft_format import damage

from .errors import RegistryError
from .records import MODES, BaseRecord, LoraSummary, VersionRecord

TAG = "loraops."
KIND = TAG + "kind"  # registered models: "task" or "base"
SPECTRUM = TAG + "spectrum."  # version tags from the low-rank analysis
MANIFEST = {"adapter": TAG + "manifest.sha256", "merged": TAG + "merged.manifest.sha256"}
GATE = TAG + "gate"  # the evaluation gate's verdict at registration: one of GATE_VERDICTS (absent outside a flow)
GATE_VERDICTS = ("passed", "blocked")
T = TypeVar("T")


def promoted_tag(mode: str) -> str:
    """The version tag holding where its `mode` folder was promoted to."""
    return f"{TAG}promoted.{mode}"


def base_tags(name: str, fingerprint: str, source: str, revision: str | None, model_type: str | None) -> dict[str, str]:
    tags = {KIND: "base", TAG + "base.name": name, TAG + "base.fingerprint": fingerprint, TAG + "base.source": source}
    if revision:
        tags[TAG + "base.revision"] = revision
    if model_type:
        tags[TAG + "base.model_type"] = model_type
    return tags


def base_record(version: ModelVersion) -> BaseRecord:
    with read_back(version):
        tags = version.tags
        return BaseRecord(
            name=tags[TAG + "base.name"],
            model=version.name,
            version=int(version.version),
            fingerprint=tags[TAG + "base.fingerprint"],
            source=tags.get(TAG + "base.source", ""),
            revision=tags.get(TAG + "base.revision"),
            model_type=tags.get(TAG + "base.model_type"),
        )


def version_tags(
    base: BaseRecord,
    dataset_fingerprint: str,
    lora: LoraSummary,
    code_version: str,
    metrics: dict[str, float],
    manifests: dict[str, str],
    spectrum: dict[str, float],
    gate: str | None = None,
) -> dict[str, str]:
    """Lineage (base, data, LoRA settings, code), metrics, the manifests' digests, the spectrum and the gate's
    verdict of a version."""
    tags = {
        TAG + "base.name": base.name,
        TAG + "base.fingerprint": base.fingerprint,
        TAG + "base.version": str(base.version),
        TAG + "dataset.fingerprint": dataset_fingerprint,
        TAG + "lora.r": str(lora.r),
        TAG + "lora.alpha": str(lora.alpha),
        TAG + "lora.targets": json.dumps(lora.targets),
        TAG + "code.version": code_version,
        TAG + "metrics": json.dumps(metrics, sort_keys=True),
    }
    tags |= {MANIFEST[mode]: digest for mode, digest in manifests.items()}
    if gate is not None:
        tags[GATE] = gate
    return tags | {f"{SPECTRUM}{key}": f"{value:g}" for key, value in spectrum.items()}


def version_record(version: ModelVersion, aliases: dict[str, int]) -> VersionRecord:
    """The record of an adapter version; `aliases`: the task's aliases (those pointing at it are kept)."""
    with read_back(version):
        tags, number = version.tags, int(version.version)
        manifests = {mode: tags[tag] for mode, tag in MANIFEST.items() if tag in tags}
        # the MLflow Model folder "<run>/model"; versions registered before MLflow Models have "<run>/adapter"
        artifact_root = (version.source or "").removesuffix("/adapter")
        created = datetime.fromtimestamp(version.creation_timestamp / 1000, timezone.utc)
        return VersionRecord(
            task=version.name,
            version=number,
            aliases=sorted(a for a, v in aliases.items() if v == number),
            base_name=tags[TAG + "base.name"],
            base_fingerprint=tags[TAG + "base.fingerprint"],
            base_version=parsed(tags, TAG + "base.version", int) if TAG + "base.version" in tags else None,
            dataset_fingerprint=tags[TAG + "dataset.fingerprint"],
            lora=LoraSummary(
                r=parsed(tags, TAG + "lora.r", int),
                alpha=parsed(tags, TAG + "lora.alpha", float),
                targets=parsed(tags, TAG + "lora.targets", json.loads),
            ),
            metrics=parsed(tags, TAG + "metrics", json.loads) if TAG + "metrics" in tags else {},
            code_version=tags.get(TAG + "code.version", ""),
            run_id=version.run_id,
            created=created.isoformat(timespec="seconds"),
            artifacts={mode: f"{artifact_root}/{mode}" for mode in manifests},
            manifests=manifests,
            promoted={mode: tags[promoted_tag(mode)] for mode in MODES if promoted_tag(mode) in tags},
            spectrum={k.removeprefix(SPECTRUM): parsed(tags, k, float) for k in tags if k.startswith(SPECTRUM)},
            gate=tags.get(GATE),
        )


@contextmanager
def read_back(version: ModelVersion) -> Iterator[None]:
    """A record read from a version's tags: a tag missing or not of its kind (edited by hand in MLflow, or written
    by something else) is a RegistryError naming the version and the tag, not a KeyError from deep inside."""
    what = f"{version.name} v{version.version}"
    fix = "restore the tag in MLflow as loraops wrote it, or register the version again"
    try:
        yield
    except KeyError as e:
        raise RegistryError(f"{what}: tag {e.args[0]} is missing; {fix}") from None
    except ValidationError as e:
        raise RegistryError(f"{what}: a tag is damaged ({damage(e)}); {fix}") from None
    except ValueError as e:  # parsed(): a value that is not of its kind
        raise RegistryError(f"{what}: {e}; {fix}") from None


def parsed(tags: dict[str, str], name: str, parse: Callable[[str], T]) -> T:
    """Tag `name` read by `parse`; a value it refuses is a ValueError naming the tag (KeyError when absent)."""
    try:
        return parse(tags[name])
    except (ValueError, RecursionError):  # RecursionError: JSON nested past the decoder's stack
        raise ValueError(f"tag {name}={tags[name][:60]!r} is damaged") from None


def checked_extra_tags(tags: dict[str, str], extra: dict[str, str]) -> dict[str, str]:
    """Extra version tags: `loraops.` names that leave the lineage tags as they are."""
    for name in extra:
        if not name.startswith(TAG) or name in tags:
            raise RegistryError(f"version tag {name!r} is not a free loraops.* name; rename it")
    return extra
