"""One task = one YAML file, validated here. Errors name the field path and the fix."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lora_core import LoraConfig
from registry.names import check_task_name


class Strict(BaseModel):
    """Unknown fields refused, and no NaN or infinity in any float: a NaN threshold makes every comparison false (a
    gate that always passes), an infinite lr or epochs fails late."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BaseSpec(Strict):
    model: str = Field(
        "default", description="Hugging Face id, a local folder, or 'default' (offline all-MiniLM-L6-v2)"
    )
    revision: str | None = Field(
        None, description="a Hugging Face revision (branch, tag or commit) of `model`; null = the default branch"
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: the frozen base in 4-bit NF4 through bitsandbytes (CUDA only)"
    )


MEASURED_VALIDATION = 0.1  # data.validation_fraction when a search, patience or selection chooses by validation


class DataSpec(Strict):
    path: str = Field(description="JSONL, CSV or Parquet; local path (relative to the task file) or s3://")
    test_path: str | None = Field(None, description="a separate held-out file; else a hash split of `path`")
    test_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="share held out for the test split (by a hash of the text) when there is no test_path",
    )
    validation_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="carved from the training data (never the test split) to score validation passes; default "
        f"{MEASURED_VALIDATION} when something chooses by them (training.search or loraops tune, patience, selection "
        "best or smoothed), else 0: the default selection (average) needs none, so all the data trains",
    )
    max_test_overlap: float = Field(
        0.1,
        ge=0,
        le=1,
        description="with test_path: the largest share of its rows that may also be training rows (same text); "
        "above it the task is refused, since the test score would be inflated",
    )
    text_field: str = Field("text", description="classification: the column holding the text")
    label_field: str = Field("label", description="classification: the column holding the label")
    prompt_field: str = Field("prompt", description="causal LM: the column holding the prompt")
    completion_field: str = Field(
        "completion", description="causal LM: the column holding the completion, the only tokens the loss counts"
    )


class LoraSpec(LoraConfig):
    """The adapter (lora_core.LoraConfig: r, alpha, target_modules, ...) plus how its factors train. A task's rank
    defaults to 32 (lora_core's own default is PEFT's 8) and alpha to 2 × r, so the update's scale s = alpha / r is 2
    whatever rank a task file gives: docs/quality.md."""

    r: int = Field(32, description="rank of the update")
    alpha: float = Field(64.0, description="scale numerator: s = alpha / r; default 2 x r (s = 2 at any rank)")

    @model_validator(mode="before")
    @classmethod
    def _alpha_follows_r(cls, raw):
        r = raw.get("r") if isinstance(raw, dict) else None
        if isinstance(r, int) and not isinstance(r, bool) and "alpha" not in raw:
            return {**raw, "alpha": 2.0 * r}
        return raw

    lr_ratio: float = Field(
        1.0,
        gt=0,
        description="LoRA+: B's learning rate is lr_ratio x training.lr (Hayou et al. 2024 use 16); 1 = plain LoRA",
    )

    def adapter(self) -> LoraConfig:
        return LoraConfig(**self.model_dump(exclude={"lr_ratio"}))


DEFAULT_EPOCHS = 6.0  # with the late weights averaged (training.selection): bench/quality.py, docs/task-files.md
# Ceilings far above any real run, so a typo (an extra few zeros) is one line, not hours or an overflow deep below
MAX_STEPS, MAX_EPOCHS, MAX_BATCH, MAX_LENGTH = 10**9, 10**4, 2**16, 2**20
BEST_METRICS = {"classification": ("loss", "accuracy", "macro_f1"), "causal-lm": ("loss", "perplexity")}


SEARCHABLE = {  # parameter -> (smallest allowed low, integer only, log scale): what training.search.space may name
    "lr": (0.0, False, True),
    "r": (0.0, True, True),
    "alpha": (0.0, False, True),
    "epochs": (0.0, False, False),
}


class SearchSpec(Strict):
    """Tuning: Optuna (TPE, median pruning on the validation passes) over `space`; each trial a child MLflow run."""

    trials: int | None = Field(12, description="trials in the study, those of an earlier stopped search included")
    timeout: float | None = Field(
        None, description="seconds of training over the study's trials, earlier ones included; null = no limit"
    )
    space: dict[str, tuple[float, float]] = Field(
        {"lr": (2e-4, 2e-2), "r": (4.0, 32.0), "epochs": (2.0, 10.0)},
        description="parameter -> [low, high]: lr, r, alpha (log scale), epochs; r alone keeps alpha/r as set",
    )
    refit: bool = Field(
        True,
        description="after the search, train the best trial's settings once more on all the training data (the "
        "validation split folded back in) and ship that; false ships the best trial's own adapter. With "
        "training.selection best or smoothed, or patience, the trial's adapter ships (they choose on the split)",
    )
    study: str | None = Field(None, description="the Optuna study's name; default <task>-<base>-<data digest>")
    storage: str | None = Field(
        None,
        description="an SQLAlchemy URL for the study; default $LORAOPS_STUDY_STORAGE, else $LORAOPS_HOME/studies.db",
    )

    @field_validator("trials", "timeout")
    @classmethod
    def _budget(cls, value, info):
        if value is not None and value <= 0:
            raise ValueError(f"{info.field_name} {value:g} is no budget, no trial would run; give a positive number")
        return value

    @field_validator("space")
    @classmethod
    def _ranges(cls, space: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        if not space:
            raise ValueError(f"an empty space searches nothing; name one or more of {', '.join(SEARCHABLE)}")
        for name, (low, high) in space.items():
            if name not in SEARCHABLE:
                raise ValueError(f"{name!r} is not a parameter the search can set; use {', '.join(SEARCHABLE)}")
            floor, integer, _ = SEARCHABLE[name]
            if low >= high:
                what = "empty" if low == high else "inverted"
                raise ValueError(f"{name}: the range [{low:g}, {high:g}] is {what}; give [low, high] with low < high")
            if low <= floor or (integer and not (low.is_integer() and high.is_integer())):
                kind = "integers" if integer else "numbers"
                raise ValueError(f"{name}: the range [{low:g}, {high:g}] must hold {kind} above {floor:g}")
        return space

    @model_validator(mode="after")
    def _some_budget(self) -> "SearchSpec":
        if self.trials is None and self.timeout is None:
            raise ValueError("training.search needs a budget; give trials, timeout, or both")
        return self


class TrainingSpec(Strict):
    max_steps: int | None = Field(
        None, gt=0, le=MAX_STEPS, description="optimizer steps to train; give this or epochs, not both"
    )
    epochs: float | None = Field(
        None,
        gt=0,
        le=MAX_EPOCHS,
        description="passes over the training split; default 6 when neither epochs nor max_steps is given",
    )
    batch_size: int = Field(
        16, gt=0, le=MAX_BATCH, description="examples (causal LM with packing: rows) per batch and process"
    )
    grad_accumulation: int = Field(
        1, gt=0, le=MAX_BATCH, description="batches whose gradients add up to one optimizer step"
    )
    lr: float = Field(1e-3, gt=0, description="AdamW; LoRA wants about 10x the rate of full fine-tuning")
    warmup_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="share of the steps over which the learning rate "
        "rises linearly from 0; it then decays linearly to 0",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the trained parameters")
    max_length: int = Field(
        64,
        gt=0,
        le=MAX_LENGTH,
        description="tokens per example; longer texts are truncated (causal LM: the "
        "prompt loses its start, never the completion)",
    )
    seed: int = Field(
        0,
        ge=0,
        lt=2**31,  # numpy (Optuna's sampler) takes seeds below 2**32; room for the epoch and trial added to it
        description="seeds torch (fresh weights such as the head) and the batch order of each epoch",
    )
    device: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="auto = CUDA when a GPU is visible, else CPU; cuda without a GPU is refused before any work"
    )
    bf16: bool = Field(
        True,
        description="bf16 autocast: on CUDA, and for training on a CPU with native bf16 (AVX512-BF16 or AMX; the LoRA "
        "update and its sum stay float32); false = float32 everywhere",
    )
    checkpoint_every: int = Field(50, gt=0, le=MAX_STEPS, description="optimizer steps between resumable checkpoints")
    threads: int | None = Field(
        None,
        gt=0,
        le=1024,
        description="CPU threads of torch, BLAS and tokenizers per training process; default: the CPUs the process "
        "is given (the smaller of its cgroup quota and CPU affinity) divided by LORAOPS_CONCURRENT_RUNS (the runs "
        "sharing them, a work-pool worker's --limit) and by training.nproc, at least 1",
    )
    nproc: int = Field(1, gt=0, le=1024, description="processes per node under torchrun (DDP), one per GPU; 1 = no DDP")
    nnodes: int = Field(
        1,
        gt=0,
        le=1024,
        description="nodes under torchrun; the others run `loraops train-node` on a shared LORAOPS_HOME",
    )
    eval_every: int | None = Field(
        None,
        gt=0,
        le=MAX_STEPS,
        description="optimizer steps between validation passes (selection average without a validation split: "
        "between the weights averaged); default: 10 per run",
    )
    patience: int | None = Field(
        None,
        gt=0,
        le=MAX_STEPS,
        description="stop after this many validation passes without a better "
        "best_metric; null (default) = run every step, still keeping the best pass",
    )
    best_metric: str | None = Field(
        None,
        description="validation metric that picks the registered checkpoint and "
        "decides early stopping: loss, accuracy, macro_f1 (classification), perplexity "
        "(causal LM); default gate.metric",
    )
    selection: Literal["best", "smoothed", "average"] = Field(
        "average",
        description="the weights registered, from the validation passes: average (default; best when patience is "
        "set) = the mean of the weights (LoRA A and B each) at the passes in the second half of training, a plain "
        "adapter of the same rank; best = the pass best on best_metric; smoothed = the pass best on best_metric "
        "averaged over it and the two passes before it; without a validation split, average takes the weights at the "
        "same steps (all the data trains, nothing is measured) and best and smoothed the last step. Measured: "
        "docs/quality.md",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward: less memory, about a third more time"
    )
    packing: bool = Field(
        False, description="causal LM: several examples per row up to max_length, attention kept within each example"
    )
    chat_template: bool = Field(
        True, description="causal LM: wrap prompts in the tokenizer's chat template when it has one"
    )
    search: SearchSpec | None = Field(
        None, description="tune lr, rank, epochs with Optuna, then ship the best trial (loraops tune; docs/tuning.md)"
    )

    @model_validator(mode="before")
    @classmethod
    def _patience_keeps_a_pass(cls, data: object) -> object:
        """patience stops at a pass, so with patience and no selection given, the pass kept is the best one."""
        if isinstance(data, dict) and data.get("patience") is not None and "selection" not in data:
            return {**data, "selection": "best"}
        return data

    @model_validator(mode="after")
    def _one_length(self) -> "TrainingSpec":
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("give one of training.max_steps or training.epochs, not both")
        return self

    @property
    def length(self) -> tuple[str, float]:
        """("max_steps", n) or ("epochs", n): how long training runs."""
        return ("max_steps", self.max_steps) if self.max_steps else ("epochs", self.epochs or DEFAULT_EPOCHS)


class GateSpec(Strict):
    metric: str = Field(
        "accuracy", description="accuracy | macro_f1 (classification), perplexity | loss (causal LM; its default)"
    )
    min_gain_over_base: float = Field(0.0, description="the adapter must beat the base by at least this much")
    must_beat_production: bool = Field(True, description="refuse an adapter worse than current production")
    merge_tolerance: float | None = Field(
        None,
        gt=0,
        description="max |merged - unmerged| / max|unmerged| on logits; "
        "default by the base's dtype: 1e-3 float32, 1e-2 float16, 3e-2 bfloat16",
    )


class PromotionSpec(Strict):
    mode: Literal["adapter", "merged"] = Field(
        "adapter", description="what ships: the adapter alone, or the base with the adapter merged in (a plain model)"
    )
    target: str | None = Field(None, description="s3://bucket/prefix or a folder; default $LORAOPS_PROMOTION_TARGET")
    auto: bool = Field(True, description="promote when the gate passes")
    serve_with: Literal["any", "vllm", "lorax", "tgi"] = Field(
        "any", description="an engine whose adapter-loading rules are checked before anything is trained or uploaded"
    )
    rank: Literal["auto"] | int | None = Field(
        None,
        description="ship a lower rank: auto = the smallest uniform rank "
        "keeping rank_pve of |dW|^2 in every module, or a number; null = as "
        "trained. The compressed adapter ships only if it passes the gate",
    )
    rank_pve: float = Field(0.95, gt=0, le=1, description="rank: auto keeps this share of |dW|^2 in every module")
    rank_tolerance: float = Field(
        0.01,
        ge=0,
        description="the compressed adapter may score at most this much below the trained one on gate.metric",
    )

    @field_validator("rank")
    @classmethod
    def _positive_rank(cls, rank):
        if isinstance(rank, int) and rank < 1:
            raise ValueError(f"promotion.rank {rank} must be a positive integer, auto or null")
        return rank


class TaskSpec(Strict):
    task: str = Field(
        description="the task's name, a slug (1-63 lower-case letters, digits, '-'): its registered "
        "model in MLflow and its prefix in the promotion target"
    )
    type: Literal["classification", "causal-lm"] = Field(
        description="classification (text -> label) or causal-lm (prompt -> completion)"
    )
    base: BaseSpec = Field(BaseSpec(), description="the shared base model the adapter trains on")
    data: DataSpec = Field(description="where the examples are and which columns to read")
    lora: LoraSpec = Field(LoraSpec(), description="the adapter: rank, scale, target modules, initialisation")
    training: TrainingSpec = Field(TrainingSpec(), description="how long and how the adapter trains")
    gate: GateSpec = Field(GateSpec(), description="what the adapter must achieve to be promoted")
    promotion: PromotionSpec = Field(PromotionSpec(), description="what ships, where, and for which serving engine")
    source: Path | None = Field(
        None,
        exclude=True,
        description="the YAML file, for relative data paths; set by load_spec, not written in a task file",
    )

    @field_validator("task")
    @classmethod
    def _slug(cls, task: str) -> str:
        try:
            return check_task_name(task)
        except ValueError as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="before")
    @classmethod
    def _metric_for_type(cls, raw):
        """gate.metric defaults by task type: accuracy for classification, perplexity for causal LM."""
        if isinstance(raw, dict) and raw.get("type") == "causal-lm":
            gate = raw.get("gate") or {}
            if isinstance(gate, dict) and "metric" not in gate:
                raw = {**raw, "gate": {**gate, "metric": "perplexity"}}
        return raw

    @model_validator(mode="before")
    @classmethod
    def _validation_when_measured(cls, raw):
        """data.validation_fraction, when not given: MEASURED_VALIDATION if training chooses or stops by validation
        passes or searches, else the field's 0 (average needs no split, and a held-out tenth cost accuracy: docs/quality.md)."""
        if (
            not isinstance(raw, dict)
            or not isinstance(raw.get("data"), dict)
            or not isinstance(raw.get("training", {}), dict)
        ):
            return raw
        training = raw.get("training") or {}
        measured = (
            training.get("search") is not None
            or training.get("patience") is not None
            or training.get("selection", "average") != "average"
        )
        if measured and "validation_fraction" not in raw["data"]:
            return {**raw, "data": {**raw["data"], "validation_fraction": MEASURED_VALIDATION}}
        return raw

    @model_validator(mode="after")
    def _metric_fits_type(self) -> "TaskSpec":
        allowed = {"classification": ("accuracy", "macro_f1"), "causal-lm": ("perplexity", "loss")}[self.type]
        if self.gate.metric not in allowed:
            raise ValueError(
                f"gate.metric {self.gate.metric!r} does not apply to {self.type}; use one of {', '.join(allowed)}"
            )
        t = self.training
        if t.best_metric is not None and t.best_metric not in BEST_METRICS[self.type]:
            raise ValueError(
                f"training.best_metric {t.best_metric!r} does not apply to {self.type}; use one of "
                f"{', '.join(BEST_METRICS[self.type])}"
            )
        if t.selection == "average" and t.patience is not None:
            raise ValueError(
                "training.patience stops at the best pass, but selection: average keeps the mean of the late "
                "passes; remove patience or use selection: best or smoothed"
            )
        measured = t.patience is not None or (t.eval_every is not None and t.selection != "average")
        if self.data.validation_fraction == 0 and measured:  # average takes its weights every eval_every unmeasured
            raise ValueError(
                "training.patience, and eval_every with selection best or smoothed, need a validation split; set "
                "data.validation_fraction > 0 or remove them"
            )
        rank = self.promotion.rank
        if isinstance(rank, int) and rank >= self.lora.r:
            raise ValueError(
                f"promotion.rank {rank} is not below lora.r {self.lora.r}; ship a smaller rank, auto, or "
                f"null (as trained)"
            )
        low_r = t.search.space["r"][0] if t.search is not None and "r" in t.search.space else None
        if isinstance(rank, int) and low_r is not None and rank >= low_r:
            raise ValueError(
                f"promotion.rank {rank} is not below {low_r:g}, the lowest r training.search.space may pick; "
                f"raise the r range, ship a smaller rank, or auto"
            )
        if rank is None and {"rank_pve", "rank_tolerance"} & self.promotion.model_fields_set:
            raise ValueError(
                "promotion.rank_pve and rank_tolerance apply with promotion.rank; set rank: auto or a "
                "number, or remove them"
            )
        if t.search is not None and self.data.validation_fraction == 0:
            raise ValueError("training.search scores trials on a validation split; set data.validation_fraction > 0")
        if t.packing and self.type != "causal-lm":
            raise ValueError("training.packing applies to causal-lm tasks only; remove it")
        return self

    def resolve(self, path: str | None) -> str | None:
        """A data path as given, made relative to the task file's folder when it is local and relative."""
        if path is None or "://" in path or Path(path).is_absolute() or self.source is None:
            return path
        return str(resolved(self.source.parent / path))


def resolved(path: Path) -> Path:
    """`path` with its links followed, or as it is when they loop: the file check that reads it says so."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # Python before 3.13 raises RuntimeError on a symlink loop
        return path.absolute()
