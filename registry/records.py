"""What the registry returns: base models, adapter versions, alias moves, promotions."""

from pydantic import BaseModel, ConfigDict

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
    lora: dict[str, object]
    metrics: dict[str, float]
    code_version: str
    run_id: str | None
    created: str
    artifacts: dict[str, str]   # mode -> MLflow artifact URI
    manifests: dict[str, str]   # mode -> content digest
    promoted: dict[str, str]    # mode -> promoted folder URI
    spectrum: dict[str, float] = {}  # rank_at_90/95/99, elbow, effective_rank, amplification (low-rank analysis)


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
