"""Which adapter versions are in production: the one place the fleet views (`adapters map`, `adapters serve-config`)
ask the registry, so that a narrower query (an alias filter, paging) changes here only."""

from registry import AdapterRegistry, VersionRecord

PRODUCTION = "production"


def production_versions(
    registry: AdapterRegistry, base: str | None = None, task: str | None = None
) -> list[VersionRecord]:
    """The version each task has in production, by task name; `base` (name or fingerprint prefix) and `task` narrow
    the query as list_versions does."""
    return registry.list_versions(task=task, base=base, alias=PRODUCTION)  # sorted by task (one version each)
