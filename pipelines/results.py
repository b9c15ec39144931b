"""What each step of the flow returns and the next one takes: typed, frozen, JSON-serialisable.

Prefect caches step results as JSON (no pickle); its serializer stores a pydantic model with its class name and
loads it back as that class, so a cache hit returns the same types as a fresh run.
"""

from pydantic import BaseModel, ConfigDict

from registry.records import Promotion

Metrics = dict[str, float]  # metric name -> value: accuracy, macro_f1, loss, perplexity


class Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PreparedData(Result):
    """The task's data, validated, deduplicated and split into `folder` as train/test/validation.jsonl."""

    digest: str  # sha256 over the splits' texts and labels: the dataset's identity in the registry
    folder: str
    source: str
    train: int
    test: int
    validation: int
    labels: list[str]  # class names in index order; empty for a causal LM


class ValidationPass(Result):
    step: int
    metrics: Metrics


class TrainedAdapter(Result):
    """A trained adapter on disk (PEFT format) and how it was trained."""

    adapter: str
    steps: int
    planned_steps: int
    best_step: int  # the step whose weights were saved (the last step without a validation split)
    stopped_early: bool
    best_validation: ValidationPass | None
    final_loss: float  # mean of the last ten optimizer steps
    seconds: float
    trainable: int
    total: int
    world_size: int


class ProductionVersion(Result):
    """The current production version a new adapter is compared with: its adapter when on the same base (measured
    again on this test split), else its recorded metrics."""

    version: int
    metrics: Metrics
    adapter: str | None


class Evaluation(Result):
    """Held-out metrics of the base, the adapter unmerged and merged, and production; the gate's verdict."""

    base: Metrics
    adapter: Metrics
    merged: Metrics
    production: Metrics | None
    merge_gap: float  # max |merged - unmerged| / max |unmerged| over the logits
    passed: bool
    reasons: list[str]


class Ranking(Result):
    """promotion.rank: the adapter that ships (cut to `rank` when the gate confirms it, else the trained one)."""

    trained_rank: int
    rank: int
    shipped: bool
    reason: str
    adapter: str
    evaluation: Evaluation
    metric_delta: float
    bytes_saved: int


class RankAdvice(Result):
    """Uniform ranks that keep 90/95/99% of every module's ‖ΔW‖², and the spectrum's elbow."""

    p90: int
    p95: int
    p99: int
    elbow: int


class Analysis(Result):
    """The adapter's low-rank analysis (lora_core.analysis): summary numbers; report.json and plots in `folder`."""

    r: int
    modules: int
    recommended_rank: RankAdvice
    mean_effective_rank: float
    mean_amplification: float | None  # None without the base, or where ΔW is orthogonal to W (infinite)
    folder: str


class Prediction(Result):
    """One text's answer from a task's adapter: a class with its probability, or a completion."""

    text: str
    task: str
    version: int
    label: str | None = None
    probability: float | None = None
    completion: str | None = None


class FlowResult(Result):
    """One task end to end: what was trained, measured, registered and promoted."""

    task: str
    version: int
    run_id: str
    trained: TrainedAdapter
    evaluation: Evaluation
    ranking: Ranking | None
    analysis: Analysis
    promotion: Promotion | None
