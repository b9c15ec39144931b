"""`loraops adapters list|show|lineage|history|fetch`, `promote`, `rollback`: the registry from the shell."""

import json

from registry import AdapterRegistry, BaseRecord, HistoryEvent, Lineage, VersionRecord
from registry.names import check_task_name, split_ref

from ..tables import render_table


def versions_table(records: list[VersionRecord]) -> str:
    # r@95: the rank that keeps 95% of |dW|^2 in every module (the low-rank analysis at registration)
    rows = [
        ("task", "version", "aliases", "base", "base fp", "dataset fp", "r", "r@95", "metrics", "promoted", "created")
    ]
    for r in records:
        metrics = " ".join(
            f"{k.removeprefix('adapter_')}={v:.3f}"
            for k, v in sorted(r.metrics.items())
            if k.startswith("adapter_") or "_" not in k
        )
        rows.append(
            (
                r.task,
                str(r.version),
                ",".join(r.aliases) or "-",
                r.base_name,
                r.base_fingerprint[:12],
                r.dataset_fingerprint[:12],
                str(r.lora.r),
                effective_rank(r),
                metrics or "-",
                ",".join(sorted(r.promoted)) or "-",
                r.created,
            )
        )
    return render_table(rows) if records else "no adapter versions registered"


def effective_rank(record: VersionRecord) -> str:
    rank = record.spectrum.get("rank_at_95")
    return "-" if rank is None else f"{rank:g}"


def history_table(events: list[HistoryEvent]) -> str:
    rows = [("time", "actor", "action", "alias", "from -> to", "mode", "reason")]
    for e in events:
        moved = f"{e.from_version or '-'} -> {e.to_version or '-'}"
        rows.append((e.time, e.actor, e.action, e.alias, moved, e.mode or "-", e.reason or "-"))
    return render_table(rows) if events else "no alias moves recorded"


def lineage_text(lineage: Lineage) -> str:
    lines = [f"task {lineage.task}"]
    for base in lineage.bases:
        if isinstance(base, BaseRecord):
            lines.append(
                f"  base {base.name} (fingerprint {base.fingerprint[:12]}, {base.model} v{base.version}, "
                f"source {base.source})"
            )
            versions = [v for v in lineage.versions if v.base_fingerprint == base.fingerprint]
        else:  # known by name only: its versions cannot be told apart by fingerprint
            lines.append(f"  base {base.name} (fingerprint ?, ? v?, source ?)")
            versions = []
        for v in versions:
            aliases = f" [{', '.join(v.aliases)}]" if v.aliases else ""
            metrics = " ".join(f"{k}={val:.3f}" for k, val in sorted(v.metrics.items()))
            lines.append(
                f"    v{v.version}{aliases} r={v.lora.r} data {v.dataset_fingerprint[:12]} "
                f"code {v.code_version} {metrics}"
            )
            for mode, uri in sorted(v.promoted.items()):
                lines.append(f"      promoted {mode}: {uri}")
    lines.append(f"  {len(lineage.history)} alias moves (loraops adapters history {lineage.task})")
    return "\n".join(lines)


def adapters(args, print_=print) -> None:
    registry = AdapterRegistry()
    if args.action == "list":
        records = registry.list_versions(args.task, args.base, args.alias, args.task_prefix)
        if args.json:
            print_(json.dumps([r.model_dump() for r in records], indent=2))
            return
        print_(versions_table(records))
        listed = {r.task for r in records}
        for d in registry.drift(args.task, args.task_prefix):
            if d.task in listed:
                print_(f"drift: {d} (moved outside loraops); settle it with promote/rollback --drift accept|revert")
    elif args.action == "show":
        print_(json.dumps(registry.resolve(*split_ref(args.ref)).model_dump(), indent=2))
    elif args.action == "lineage":
        lineage = registry.lineage(check_task_name(args.ref))
        print_(json.dumps(lineage.model_dump(), indent=2) if args.json else lineage_text(lineage))
    elif args.action == "history":
        events = registry.history(check_task_name(args.ref))
        print_(json.dumps([e.model_dump() for e in events], indent=2) if args.json else history_table(events))
        if not args.json:
            for d in registry.drift(args.ref):
                print_(f"drift: {d} (moved outside loraops)")
    elif args.action == "fetch":
        print_(registry.fetch(*split_ref(args.ref), mode=args.mode))


def promote(args, print_=print) -> None:
    from ..live_engine import check_live_rank, reach_live_engine

    registry = AdapterRegistry()
    serve_with = args.serve_with
    # A `loraops serve` serving this base takes the new version: vLLM's rules are checked before any upload.
    if check_live_rank(registry, args.task, args.version) and serve_with == "any":
        serve_with = "vllm"
    result = registry.promote(
        args.task, args.version, args.mode, args.target, args.reason or "", serve_with=serve_with, drift=args.drift
    )
    print_(
        f"promoted {result.task} v{result.version} ({result.mode}) to {result.uri}: "
        f"{len(result.uploaded)} files uploaded ({result.bytes_uploaded:,} bytes), {len(result.skipped)} already there, "
        f"all verified by sha256"
    )
    if result.previous != result.version:
        print_(f"production: {result.previous or '-'} -> {result.version}")
    if line := reach_live_engine(registry, result.task):
        print_(line)


def rollback(args, print_=print) -> None:
    from ..live_engine import reach_live_engine

    registry = AdapterRegistry()
    events = registry.rollback(args.task, args.reason or "", drift=args.drift)
    print_(
        f"production: {events[0].from_version} -> {events[0].to_version}; "
        f"previous-production is now {events[1].to_version or 'unset'}"
    )
    if line := reach_live_engine(registry, args.task):
        print_(line)
