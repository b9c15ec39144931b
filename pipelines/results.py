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
    warnings: list[str] = []  # what was accepted with a word: merged label spellings, test rows also in train


class ValidationPass(Result):
    step: int
    metrics: Metrics


class TrainedAdapter(Result):
    """A trained adapter on disk (PEFT format) and how it was trained."""

    adapter: str
    steps: int
    planned_steps: int
    best_step: int  # the step whose weights were saved (the last step without a validation split or when averaged)
    stopped_early: bool
    best_validation: ValidationPass | None  # the validation metrics of the saved weights
    final_loss: float  # mean of the last ten optimizer steps
    seconds: float
    trainable: int
    total: int
    world_size: int
    averaged_steps: list[int] = []  # training.selection average: the passes whose mean weights were saved


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


class TrialOutcome(Result):
    """One search trial: `state` complete (with its validation `value` and the adapter trained), pruned or diverged."""

    number: int
    state: str  # complete | pruned | diverged
    value: float | None
    trained: TrainedAdapter | None
    run_id: str  # its child MLflow run
    reason: str


class SearchSummary(Result):
    """A search's study and its best trial: recorded on the registered version (loraops.search.* tags)."""

    study: str
    storage: str  # the study's storage URL, password hidden
    metric: str  # the validation metric trials were scored on (the gate's, or training.best_metric)
    trials: int  # finished trials in the study: complete + pruned + failed, earlier searches included
    complete: int
    pruned: int
    ran: int  # trials this search ran (the others were in the study already)
    best_trial: int
    best_value: float
    best_params: dict[str, float]
    refit: bool = False  # the version shipped is the best trial's settings trained again on all the training data


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
    search: SearchSummary | None = None  # when a search (training.search, loraops tune) chose the trained adapter
