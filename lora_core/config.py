"""LoraConfig: the hyper-parameters of one adapter, validated on construction."""

import math
import re
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ALL_LINEAR = "all-linear"

_T = TypeVar("_T")


class LoraConfig(BaseModel):
    """LoRA hyper-parameters.

    ΔW = s·B·A with A: [r, in], B: [out, r] and s = alpha / r (or alpha / √r with use_rslora).

    target_modules: a list of names, each matched by exact module path or dotted suffix
    ("query" matches "encoder.layer.0.attention.self.query"); a single string is a regex
    matched against the whole module path (PEFT's rule); "all-linear" wraps every Linear /
    Conv1D except the output head and modules_to_save; None (the default) takes the attention
    and MLP projections of the model's architecture (lora_core.targets), all-linear for one
    not in that table. A named nn.Embedding (e.g. "word_embeddings") takes LoRA too (PEFT's
    lora_embedding_A/B; not when its weight is tied to the output head); "all-linear" never picks one.
    init: "default" (A Kaiming-uniform a=√5, B=0), "gaussian" (A ~ N(0, (1/r)²), B=0, as
    PEFT), "pissa" (A, B = top-r SVD factors of W, W ← W − s·BA; output unchanged at step 0);
    an embedding's A = 0, B ~ N(0, std(W0)²) whatever init says, and no pissa.
    rank_pattern / alpha_pattern: per-module overrides; a key matches a module path that ends
    with it (regex, PEFT's rule).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # no NaN or inf alpha, dropout

    r: int = Field(default=8, description="rank of the update")
    alpha: float = Field(default=16.0, description="scale numerator: s = alpha / r")
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="dropout on the LoRA branch input (not on an embedding's, as PEFT)"
    )
    target_modules: list[str] | str | None = Field(
        default=None,
        description="modules to adapt: names matched by path or dotted suffix, one regex string, 'all-linear', or "
        "null for the architecture's attention and MLP projections; a named embedding (e.g. word_embeddings) "
        "takes LoRA too",
    )
    use_rslora: bool = Field(default=False, description="rank-stabilised scale s = alpha / sqrt(r)")
    init: Literal["default", "gaussian", "pissa"] = Field(
        default="default", description="initialisation of A and B (B = 0 except pissa: top-r SVD factors of W)"
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="whole modules trained and saved with the adapter (e.g. a task's head)"
    )
    bias: Literal["none"] = Field(default="none", description="biases stay frozen (PEFT's bias='none')")
    rank_pattern: dict[str, int] = Field(
        default_factory=dict, description="per-module rank: module path suffix (regex) -> r"
    )
    alpha_pattern: dict[str, float] = Field(
        default_factory=dict, description="per-module alpha: module path suffix (regex) -> alpha"
    )
    task_type: str | None = Field(default=None, description="PEFT's task type (SEQ_CLS, CAUSAL_LM); set by the flow")

    @field_validator("r")
    @classmethod
    def _positive_rank(cls, r: int) -> int:
        if r <= 0:
            raise ValueError(f"r={r}: the rank must be a positive integer; use e.g. r=8")
        return r

    @field_validator("alpha")
    @classmethod
    def _positive_alpha(cls, alpha: float) -> float:
        if not alpha > 0 or not math.isfinite(alpha):
            raise ValueError(f"alpha={alpha}: alpha must be a positive number; use e.g. alpha=2*r")
        return alpha

    @field_validator("target_modules")
    @classmethod
    def _targets_given(cls, targets: list[str] | str | None) -> list[str] | str | None:
        if targets is None:
            return None
        if not targets:
            raise ValueError(
                "target_modules is empty: name the modules to adapt, e.g. ['query', 'value'], "
                "or leave it out for the architecture's defaults"
            )
        if isinstance(targets, str) and targets != ALL_LINEAR:
            try:
                re.compile(targets)
            except re.error as e:
                raise ValueError(
                    f"target_modules {targets!r} is not a valid regex ({e}); pass a list of module names instead"
                ) from e
        return targets

    @model_validator(mode="after")
    def _valid_patterns(self) -> "LoraConfig":
        for key, r in self.rank_pattern.items():
            if r <= 0:
                raise ValueError(f"rank_pattern[{key!r}]={r}: ranks must be positive integers")
        for key, a in self.alpha_pattern.items():
            if not a > 0:
                raise ValueError(f"alpha_pattern[{key!r}]={a}: alphas must be positive numbers")
        return self

    def rank_for(self, module_path: str) -> int:
        return _pattern_value(self.rank_pattern, module_path, self.r)

    def alpha_for(self, module_path: str) -> float:
        return _pattern_value(self.alpha_pattern, module_path, self.alpha)

    def scaling_for(self, module_path: str) -> float:
        """s = alpha / r, or alpha / √r with rsLoRA (Kalajdzievski 2023)."""
        r, alpha = self.rank_for(module_path), self.alpha_for(module_path)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def _pattern_value(pattern: dict[str, _T], module_path: str, default: _T) -> _T:
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module_path):
            return value
    return default
