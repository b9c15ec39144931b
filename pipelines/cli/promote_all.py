"""`loraops promote --all-passing`: the candidate of every task whose gate passed, promoted in parallel.

Prints one row per candidate (task, version, result, detail); exits 1 naming the tasks that failed, the others
promoted all the same.
"""

from registry import AdapterRegistry
from registry.errors import PromotionFailed
from registry.records import PromotionOutcome

from ..tables import render_table


def outcomes_table(outcomes: list[PromotionOutcome]) -> str:
    if not outcomes:
        return "no candidate to promote (no task has a candidate, or none matches --base / --task-prefix)"
    rows = [("task", "version", "result", "detail")]
    rows += [(o.task, f"v{o.version}", o.result, o.detail) for o in outcomes]
    return render_table(rows)


def promote_all_passing(args, print_=print) -> None:
    outcomes = AdapterRegistry().promote_passing(
        base=args.base,
        task_prefix=args.task_prefix,
        mode=args.mode,
        target=args.target,
        jobs=args.jobs,
        reason=args.reason or "gate passed",
        serve_with=args.serve_with,
        drift=args.drift,
    )
    print_(outcomes_table(outcomes))
    counts = {result: sum(o.result == result for o in outcomes) for result in ("promoted", "skipped", "failed")}
    print_(", ".join(f"{n} {result}" for result, n in counts.items()))
    failed = [o for o in outcomes if o.result == "failed"]
    if failed:
        named = "; ".join(f"{o.task} v{o.version} ({o.detail})" for o in failed)
        raise PromotionFailed(
            f"{len(failed)} of {len(outcomes)} promotions failed: {named}; the others stand, fix the cause and "
            f"run promote --all-passing again"
        )
