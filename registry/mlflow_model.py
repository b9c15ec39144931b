"""Every task version is an MLflow Model: `models:/<task>@production` loads with mlflow.pyfunc and serves with
`mlflow models serve`.

A version's run holds, under `model/`: the MLmodel (a pyfunc flavour whose loader module the caller names, shipped
in `code/` with its package, lora_core and registry), the signature and an input example, pinned requirements, and
`data/loraops/description.json`, which names the task kind and the base the adapter was trained on (registered location and
weight fingerprint). The weights sit beside it in `adapter/` and `merged/`, logged once with their manifests; an
adapter-only version never copies its base into MLflow.
"""

import importlib.metadata
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from .errors import RegistryError
from .records import BaseRecord

if TYPE_CHECKING:  # mlflow.models is imported when a model is written, not with the registry
    from mlflow.models import ModelSignature

MODEL_DIR = "model"  # run-relative folder of the MLflow Model
DESCRIPTION = "description.json"  # in data/loraops/, the pyfunc flavour's data folder
PACKAGES = ("lora_core", "registry")  # shipped in code/, with the loader module's package
Kind = Literal["classification", "causal-lm"]
KINDS: dict[str, Kind] = {"SEQ_CLS": "classification", "CAUSAL_LM": "causal-lm"}


class ModelDescription(BaseModel):
    """description.json: what the pyfunc loader needs beside the weights, the task's kind and the base it needs."""

    model_config = ConfigDict(frozen=True)
    kind: Kind
    base: BaseRecord


def signature(kind: str) -> "ModelSignature":
    """Texts in (a list, or a DataFrame's one column); label + probability, or a completion, out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    if kind == "classification":
        return ModelSignature(
            Schema([ColSpec("string")]), Schema([ColSpec("string", "label"), ColSpec("double", "probability")])
        )
    return ModelSignature(
        Schema([ColSpec("string")]),
        Schema([ColSpec("string", "completion")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", 20)]),
    )


def requirements() -> list[str]:
    """loraops's runtime dependencies pinned to the versions installed here (local tags such as +cpu dropped:
    the serving machine picks its own torch build)."""
    from packaging.requirements import Requirement

    pinned = []
    for line in importlib.metadata.requires("loraops") or []:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue  # an extra (test dependencies)
        try:
            pinned.append(f"{requirement.name}=={importlib.metadata.version(requirement.name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(str(requirement))
    return pinned


def write_model(
    out: Path, task_type: str | None, base: BaseRecord, input_example: list[str], loader_module: str
) -> None:
    """The MLflow Model folder of a version, without its weights (logged beside it). `loader_module`: the module
    mlflow.pyfunc loads the model with (its `_load_pyfunc`), shipped with its whole package."""
    import mlflow.pyfunc

    kind = KINDS.get(task_type or "")
    if kind is None:
        raise RegistryError(
            f"adapter task_type {task_type!r} is not one of {', '.join(KINDS)}; save the adapter with the task's type"
        )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "loraops"
        data.mkdir()
        (data / DESCRIPTION).write_text(ModelDescription(kind=kind, base=base).model_dump_json(indent=1))
        packages = dict.fromkeys([*PACKAGES, loader_module.split(".")[0]])
        code = [_copy_package(name, Path(tmp) / "code") for name in packages]
        mlflow.pyfunc.save_model(
            str(out),
            loader_module=loader_module,
            data_path=str(data),
            code_paths=code,
            signature=signature(kind),
            input_example=input_example,
            pip_requirements=requirements(),
            model_config={"base_path": ""},
        )


def _copy_package(name: str, folder: Path) -> str:
    """The package's Python sources (no caches), found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RegistryError(f"package {name!r} is not importable here; install loraops (pip install -e .)")
    source = Path(spec.submodule_search_locations[0])
    target = folder / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return str(target)
