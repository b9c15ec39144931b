"""Promotion at fleet rate: the candidate of every task whose gate passed, promoted in parallel under one bound.

Which versions (`select`, the one place a candidate is chosen): of each task, the version `candidate` points at,
when its gate verdict (tag loraops.gate, written by the flow at registration) is "passed". A candidate that is
production already is skipped, and so is one whose gate blocked or that has no verdict (registered outside a flow:
promote it by name).

How: at most `jobs` tasks at once, and every object or part any of them sends holds one of `jobs` transfer slots
(stores.TransferSlots), so the bound holds across tasks and inside one large file alike. Each task's promotion is
the single-task one (promotion.py): every file verified by the store, manifest last, the alias moved only after. A
task that fails keeps its aliases and does not stop the others; the outcomes say which did what.
"""

import threading
from concurrent.futures import ThreadPoolExecutor

from .digests import DigestCache
from .errors import RegistryError
from .promotion import Promotions
from .records import Promotion, PromotionOutcome, VersionRecord
from .stores import TRANSFER_JOBS, TransferSlots, open_store


def select(candidates: list[VersionRecord]) -> tuple[list[VersionRecord], list[PromotionOutcome]]:
    """(candidates to promote, candidates skipped with the reason)."""
    chosen, skipped = [], []
    for record in candidates:
        if "production" in record.aliases:
            skipped.append(outcome(record, "skipped", "already production"))
        elif record.gate != "passed":
            why = "gate blocked" if record.gate == "blocked" else "no gate verdict (registered outside a flow)"
            skipped.append(outcome(record, "skipped", why))
        else:
            chosen.append(record)
    return chosen, skipped


def promote_all(
    promotions: Promotions,
    records: list[VersionRecord],
    mode: str = "adapter",
    target: str | None = None,
    jobs: int = TRANSFER_JOBS,
    reason: str = "gate passed",
    serve_with: str = "any",
    drift: str | None = None,
) -> list[PromotionOutcome]:
    """Promote each of `records` (select's choice); one outcome per record, in their order.

    The target is checked once first: a missing bucket or rejected credentials stop everything before any upload."""
    open_store(target or promotions.settings.promotion_target).check()
    local = threading.local()

    def one(record: VersionRecord) -> PromotionOutcome:
        # SQLite objects belong to the thread that opened them: each of these threads has its own digest cache.
        if not hasattr(local, "promotions"):
            p = promotions
            local.promotions = Promotions(p.catalog, p.client, p.book, p.settings, DigestCache(p.settings.digests))
        try:
            done = local.promotions.promote(
                record.task, record.version, mode, target, reason, False, serve_with, drift, slots
            )
        except Exception as e:  # noqa: BLE001 - one task's failure is its row of the outcome, not the fleet's end
            return outcome(record, "failed", first_line(e))
        return outcome(record, "promoted", done.uri, done)

    with TransferSlots(jobs) as slots, ThreadPoolExecutor(jobs, thread_name_prefix="loraops-promote") as tasks:
        return list(tasks.map(one, records))


def outcome(record: VersionRecord, result: str, detail: str, promotion: Promotion | None = None) -> PromotionOutcome:
    return PromotionOutcome(task=record.task, version=record.version, result=result, detail=detail, promotion=promotion)


def first_line(error: Exception) -> str:
    """The error's message as the CLI prints it; with its type's name for an error that is no RegistryError."""
    message = (str(error).strip().splitlines() or [""])[0]
    return message if isinstance(error, RegistryError) and message else f"{type(error).__name__}: {message}"
