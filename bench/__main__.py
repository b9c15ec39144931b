"""`python -m bench [--quick] [--out DIR]`: every case beside its anchor; writes BENCHMARKS.md and results.json.

--quick runs tiny sizes in seconds (CI keeps the harness working; no timing is asserted). The full
mode builds a 1.1B-parameter bf16 Llama checkpoint on first use (under --work) and takes minutes.
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench import cases
from bench.concurrent import concurrent_runs
from bench.fanout import fan_out
from bench.fleet import registry_fleet
from bench.latency import latency
from bench.promotion import promotion
from bench.serving import serving_bench
from bench.training_cost import training_cost

ran = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fmt(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "bytes":
        return f"{value / 2**20:,.0f} MiB" if value >= 2**20 else f"{value / 1024:,.0f} KiB"
    if unit == "B/s":
        return f"{value / 1e6:,.0f} MB/s"
    if unit == "tok/s":
        return f"{value:,.1f} tok/s"
    if unit == "count":
        return f"{value:,}"
    return f"{value * 1e6:,.0f} us" if value < 1e-3 else f"{value * 1e3:,.1f} ms" if value < 1 else f"{value:,.2f} s"


def machine() -> str:
    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    import peft
    import transformers

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}, peft {peft.__version__}, Python {platform.python_version()}, GPU: {gpu}"
    )


INDEPENDENT = (
    "cli start",
    "train step",
    "training cost",
    "merge in memory",
    "load and switch",
    "flow overhead",
    "concurrent runs",
    "fan-out",
    "inference latency",
    "task map",
    "registry fleet",
    "promotion",
    "serving",
)


def report(rows: list[dict], failures: list[str], quick: bool, full_run: str) -> str:
    """`full_run`: when `python -m bench` last ran every case; rows re-run since (--only) say their own date."""
    lines = [
        f"# Benchmarks ({'quick' if quick else 'full'} mode)",
        "",
        f"Run {full_run} with `python -m bench{' --quick' if quick else ''}`"
        + (
            f"; the rows marked re-run were measured later with --only, on: {machine()}."
            if any(r.get("ran", ran) != full_run for r in rows)
            else f" on: {machine()}."
        ),
        "",
        "Each case runs loraops and its anchor in the same run on the same inputs, repeats interleaved, medians; "
        "ratio = loraops / anchor (for bytes/s and tokens/s higher is better, for everything else lower is better).",
        "",
        "| case | loraops | anchor | ratio | target | notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "-" if r["anchor"] is None else f"{r['ratio']:.2f}x"
        when = f" (re-run {r['ran']} with --only)" if r.get("ran", ran) != full_run else ""
        lines.append(
            f"| {r['case']} | {fmt(r['ours'], r['unit'])} | {fmt(r['anchor'], r['unit'])} | {ratio} | "
            f"{r['target']} | {r['note']}{when} |"
        )
    lines += [
        "",
        "Not measured here: GPU cases (no GPU on this machine; the code paths are the same with device: cuda).",
        "vLLM serving on a GPU: not run, no GPU lent to this task (the serving rows are vLLM's CPU build).",
    ]
    lines += [f"Failed: {f}" for f in failures]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    parser.add_argument("--out", default=".", help="folder for BENCHMARKS.md and bench-results.json")
    parser.add_argument("--work", default=None, help="folder for built models (kept between runs); default a temp dir")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=INDEPENDENT,
        metavar="CASE",
        help=f"re-run these cases ({', '.join(INDEPENDENT)}) and merge them into the results in --out",
    )
    args = parser.parse_args()
    results = Path(args.out) / "bench-results.json"
    previous = json.loads(results.read_text()) if args.only and results.exists() else {}
    if previous and previous.get("quick") != args.quick:
        mode = "quick" if previous.get("quick") else "full"
        parser.error(
            f"{results} holds a {mode} run; --only merges into a run of the same mode: pass --out another folder"
        )
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    work = Path(args.work or tempfile.mkdtemp(prefix="loraops-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, failures = [], []

    def attempt(name, fn, *a):
        if args.only and name not in args.only:
            return None
        try:
            result = fn(*a)
            rows.extend({**r, "group": name, "ran": ran} for r in (result[0] if isinstance(result, tuple) else result))
            for r in rows[-len(result[0] if isinstance(result, tuple) else result) :]:
                print(f"{r['case']}: {fmt(r['ours'], r['unit'])} vs {fmt(r['anchor'], r['unit'])}", flush=True)
            return result
        except Exception as e:  # one broken case must not hide the others; it is reported
            traceback.print_exc()
            failures.append(f"{name}: {type(e).__name__}: {e}")
            return None

    attempt("cli start", cases.cli_start, args.quick)
    attempt("train step", cases.train_step, args.quick)
    attempt("training cost", training_cost, args.quick, work)
    attempt("merge in memory", cases.merge_in_memory, args.quick)
    scratch = Path(tempfile.mkdtemp(dir=work))
    attempt("load and switch", cases.load_and_switch, args.quick, scratch)
    merged = None if args.only else attempt("disk merge", cases.disk_merge, args.quick, work)
    if merged:
        _, base, adapter = merged
        attempt("fingerprint", cases.fingerprint, base, work)
        attempt("registry", cases.registry_cases, args.quick, scratch, base, base, adapter)
        attempt("llm flow", cases.llm_flow, args.quick, work, base)
    attempt("flow overhead", cases.flow_overhead, args.quick, work)
    attempt("concurrent runs", concurrent_runs, args.quick, work)
    if not args.quick:  # it starts the team stack (PostgreSQL and four servers): minutes, not seconds
        attempt("fan-out", fan_out, args.quick, work)
    attempt("inference latency", latency, args.quick)
    attempt("task map", cases.task_map, args.quick, work)
    if not args.quick or (args.only and "promotion" in args.only):  # moto, an mlflow server and 1 GB through them
        attempt("promotion", promotion, args.quick, work)
    attempt("registry fleet", registry_fleet, args.quick, scratch)
    if not args.quick or (args.only and "serving" in args.only):  # vLLM starts 4 times (quick: 2): minutes
        attempt("serving", serving_bench, args.quick, work)
    shutil.rmtree(scratch, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    full_run = ran
    if args.only and previous:  # the other cases as the last run measured them
        fresh = {r["case"] for r in rows}
        full_run = previous.get("ran", "an earlier run")
        rows = [
            {"ran": full_run, **r}
            for r in previous["rows"]
            if r.get("group") not in args.only and r["case"] not in fresh
        ] + rows
    (out / "BENCHMARKS.md").write_text(report(rows, failures, args.quick, full_run))
    (out / "bench-results.json").write_text(
        json.dumps({"quick": args.quick, "ran": full_run, "rows": rows, "failures": failures}, indent=2)
    )
    print(f"wrote {out / 'BENCHMARKS.md'}")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
