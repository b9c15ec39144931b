"""Which weights a run keeps from its validation passes (training.selection).

A validation split of a couple of hundred examples scores one pass with a noise of about two points, so the best
single pass is often a lucky early one that does not hold on test (issue 22: wordnet-senses 88.2 ± 3.1 over seeds,
its seed 1 kept such a pass). The choices:
- best: the weights of the pass best on the metric (a tie goes to the lower loss);
- smoothed: the weights of the pass best on the metric averaged over it and the `window - 1` passes before it;
- average: the mean of the trainable weights at the passes after half the planned steps (SWA, Izmailov et al.
  2018, over the tail of the linear decay). LoRA factors are averaged one by one, Ā = mean(A_i), B̄ = mean(B_i), as
  SWA on LoRA does: the adapter keeps its rank and shapes, saves as any PEFT adapter and merges exactly to
  W + s·B̄Ā. That is not mean(s·B_i A_i), whose rank grows with the passes; late passes lie close together, so the
  two differ little (measured in the commit that made this the default).
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .results import Metrics, ValidationPass

Selection = Literal["best", "smoothed", "average"]


@dataclass
class Validation:
    """Validation during training: `run()` -> metrics, every `every` optimizer steps; `selection` says which weights
    are kept (metric: lower is better for loss and perplexity); `patience` passes without a better one stop training
    (best and smoothed only: an average has no pass to stop at). `run` None: no validation split, so nothing is
    measured; an average still takes the weights at the same points (it needs no metric)."""

    run: Callable[[], Metrics] | None
    every: int
    metric: str = "loss"
    patience: int | None = None
    on_result: Callable[[int, Metrics], None] | None = None
    selection: Selection = "best"
    window: int = 3  # smoothed: passes per mean

    def __post_init__(self) -> None:
        if self.selection == "average" and self.patience is not None:
            raise ValueError("selection 'average' keeps no single pass, so patience cannot stop at one")
        if self.run is None and self.selection != "average":
            raise ValueError(f"selection {self.selection!r} chooses a pass by its metrics, so it needs a run")

    def better(self, a: Metrics, b: Metrics | None) -> bool:
        """Is pass `a` better than pass `b`? On `metric`; a tie (accuracy on a small split) goes to the lower loss."""

        def rank(m: Metrics) -> tuple[float, float]:
            return (m[self.metric] if self.metric in ("loss", "perplexity") else -m[self.metric], m.get("loss", 0.0))

        return b is None or rank(a) < rank(b)

    def standing(self, evaluations: list[ValidationPass], index: int) -> Metrics | None:
        """The metrics pass `index` is judged on: its own (best), or their mean over it and the `window - 1` passes
        before it (smoothed; None while fewer passes have been made)."""
        if self.selection != "smoothed":
            return evaluations[index].metrics
        if index + 1 < self.window:
            return None
        passes = evaluations[index + 1 - self.window : index + 1]
        return {k: sum(p.metrics[k] for p in passes) / len(passes) for k in passes[-1].metrics}


@dataclass
class Kept:
    """The weights kept so far: the chosen pass's (best, smoothed), or the float32 sum of the averaged passes'
    weights and their steps (average). A checkpoint stores them beside the running weights."""

    best: dict[str, torch.Tensor] | None = None
    total: dict[str, torch.Tensor] | None = None
    averaged_steps: list[int] = field(default_factory=list)

    def keep(self, named: dict[str, nn.Parameter]) -> None:
        self.best = {n: p.detach().to("cpu", copy=True) for n, p in named.items()}

    def add(self, named: dict[str, nn.Parameter], step: int) -> None:
        if self.total is None:
            self.total = {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in named.items()}
        else:
            for n, p in named.items():
                self.total[n].add_(p.detach().to("cpu", torch.float32))
        self.averaged_steps.append(step)

    def weights(self) -> dict[str, torch.Tensor] | None:
        """What the model ends holding: the kept pass, the mean of the averaged ones, or None (the last step)."""
        if self.total is not None:
            return {n: t / len(self.averaged_steps) for n, t in self.total.items()}
        return self.best
