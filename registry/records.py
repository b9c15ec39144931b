"""What the registry returns: base models, adapter versions, lineage, alias moves, promotions."""

from pydantic import BaseModel, ConfigDict, field_validator

MODES = ("adapter", "merged")


class BaseRecord(BaseModel):
    """A registered base model: its weights' fingerprint and where they came from."""

    model_config = ConfigDict(frozen=True)
    name: str
    model: str  # MLflow registered model name, base.<slug>
    version: int
    fingerprint: str
    source: str
    revision: str | None = None
    model_type: str | None = None  # config.json's model_type: which engines can serve adapters on it


class BaseName(BaseModel):
    """A base known only by the name a version recorded (its registered model is gone or was never found)."""

    model_config = ConfigDict(frozen=True)
    name: str


class LoraSummary(BaseModel):
    """The adapter's LoRA settings as adapter_config.json has them: rank, alpha (scaling = alpha / r), targets.
    A regex target (a string in the config) is kept as the one element of `targets`."""

    model_config = ConfigDict(frozen=True)
    r: int
    alpha: float
    targets: list[str]

    @field_validator("targets", mode="before")
    @classmethod
    def one_regex(cls, targets: object) -> object:
        return [targets] if isinstance(targets, str) else targets


class VersionRecord(BaseModel):
    """One adapter version of a task, with its lineage."""

    model_config = ConfigDict(frozen=True)
    task: str
    version: int
    aliases: list[str]
    base_name: str
    base_fingerprint: str
    base_version: int | None
    dataset_fingerprint: str
    lora: LoraSummary
    metrics: dict[str, float]
    code_version: str
    run_id: str | None
    created: str
    artifacts: dict[str, str]  # mode -> MLflow artifact URI
    manifests: dict[str, str]  # mode -> content digest
    promoted: dict[str, str]  # mode -> promoted folder URI
    spectrum: dict[str, float] = {}  # rank_at_90/95/99, elbow, effective_rank, amplification (low-rank analysis)
    gate: str | None = None  # the flow's gate verdict, "passed" or "blocked"; None when registered outside a flow


class HistoryEvent(BaseModel):
    """One alias move: who moved which alias from which version to which, when and why."""

    model_config = ConfigDict(frozen=True)
    time: str
    actor: str
    action: str  # register | promote | rollback
    alias: str
    from_version: int | None
    to_version: int | None
    reason: str = ""
    mode: str | None = None


class Promotion(BaseModel):
    model_config = ConfigDict(frozen=True)
    task: str
    version: int
    mode: str
    uri: str
    uploaded: list[str]
    skipped: list[str]
    bytes_uploaded: int
    previous: int | None
    events: list[HistoryEvent]


class Lineage(BaseModel):
    """Base model(s) -> versions -> alias moves of one task."""

    model_config = ConfigDict(frozen=True)
    task: str
    bases: list[BaseRecord | BaseName]
    versions: list[VersionRecord]
    history: list[HistoryEvent]


class PromotionOutcome(BaseModel):
    """What a fleet promotion did with one task's candidate: promoted (detail: where), skipped or failed (why)."""

    model_config = ConfigDict(frozen=True)
    task: str
    version: int
    result: str  # promoted | skipped | failed
    detail: str
    promotion: Promotion | None = None
