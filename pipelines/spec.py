"""One task = one YAML file, validated here. Errors name the field path and the fix."""

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lora_core import LoraConfig
from registry.names import check_task_name


class SpecError(ValueError):
    """The task file is unusable; the message gives the field path and the fix."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSpec(Strict):
    model: str = Field("default", description="Hugging Face id, a local folder, or 'default' (offline all-MiniLM-L6-v2)")
    revision: str | None = None


class DataSpec(Strict):
    path: str = Field(description="JSONL, CSV or Parquet; local path (relative to the task file) or s3://")
    test_path: str | None = Field(None, description="a separate held-out file; else a hash split of `path`")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    text_field: str = "text"
    label_field: str = "label"
    prompt_field: str = "prompt"
    completion_field: str = "completion"


class TrainingSpec(Strict):
    max_steps: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(16, gt=0)
    grad_accumulation: int = Field(1, gt=0)
    lr: float = Field(1e-3, gt=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_length: int = Field(64, gt=0)
    seed: int = 0
    device: Literal["auto", "cuda", "cpu"] = "auto"
    bf16: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU)")
    checkpoint_every: int = Field(50, gt=0, description="optimizer steps between resumable checkpoints")
    nproc: int = Field(1, gt=0, description="processes per node under torchrun (DDP), one per GPU; 1 = no DDP")
    nnodes: int = Field(1, gt=0, description="nodes under torchrun; the others run `loraops train-node` on a shared "
                        "LORAOPS_HOME")

    @model_validator(mode="after")
    def _one_length(self) -> "TrainingSpec":
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of training.max_steps or training.epochs")
        return self


class GateSpec(Strict):
    metric: str = Field("accuracy", description="accuracy | macro_f1 (classification), perplexity (causal LM)")
    min_gain_over_base: float = Field(0.0, description="the adapter must beat the base by at least this much")
    must_beat_production: bool = Field(True, description="refuse an adapter worse than current production")
    merge_tolerance: float | None = Field(None, gt=0, description="max |merged - unmerged| / max|unmerged| on logits; "
                                          "default by the base's dtype: 1e-3 float32, 1e-2 float16, 3e-2 bfloat16")


class PromotionSpec(Strict):
    mode: Literal["adapter", "merged"] = "adapter"
    target: str | None = Field(None, description="s3://bucket/prefix or a folder; default $LORAOPS_PROMOTION_TARGET")
    auto: bool = Field(True, description="promote when the gate passes")
    serve_with: Literal["any", "vllm", "lorax", "tgi"] = Field(
        "any", description="an engine whose adapter-loading rules are checked before anything is trained or uploaded")


class TaskSpec(Strict):
    task: str
    type: Literal["classification", "causal-lm"]
    base: BaseSpec = BaseSpec()
    data: DataSpec
    lora: LoraConfig
    training: TrainingSpec
    gate: GateSpec = GateSpec()
    promotion: PromotionSpec = PromotionSpec()
    source: Path | None = Field(None, exclude=True)  # the YAML file, for relative data paths

    @field_validator("task")
    @classmethod
    def _slug(cls, task: str) -> str:
        try:
            return check_task_name(task)
        except ValueError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _metric_fits_type(self) -> "TaskSpec":
        allowed = {"classification": ("accuracy", "macro_f1"), "causal-lm": ("perplexity", "loss")}[self.type]
        if self.gate.metric not in allowed:
            raise ValueError(f"gate.metric {self.gate.metric!r} does not apply to {self.type}; use one of {', '.join(allowed)}")
        return self

    def resolve(self, path: str | None) -> str | None:
        """A data path as given, made relative to the task file's folder when it is local and relative."""
        if path is None or "://" in path or Path(path).is_absolute() or self.source is None:
            return path
        return str((self.source.parent / path).resolve())


def load_spec(path: str | Path) -> TaskSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such task file") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a task file is a YAML mapping with task, type, data, lora and training")
    try:
        return TaskSpec.model_validate({**raw, "source": path.resolve()})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = "required field is missing; add it"
        elif first["type"] == "extra_forbidden":
            message = "unknown field; remove it or check the spelling"
        raise SpecError(f"{path}: {where}: {message}") from None
