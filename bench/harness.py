"""Timing and memory helpers: interleaved repeats, medians, child-process peak RSS."""

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def interleaved(
    runs: dict[str, Callable[[], None]], repeats: int, setup: Callable[[], None] | None = None
) -> dict[str, float]:
    """Median seconds per callable after one untimed warm-up call each, the callables taking turns so drift hits
    all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up: first calls pay for connections, caches and lazy imports
        if setup:
            setup()
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            if setup:
                setup()
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def in_child(module: str, *args: str, env: dict | None = None) -> dict:
    """Run `python -m module args` and return the JSON its last line prints, with its peak RSS in bytes."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if done.returncode:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.setdefault("seconds", time.perf_counter() - started)
    return result


def peak_rss(pid: int | str = "self") -> int:
    """A process's peak resident set (VmHWM), bytes.

    Not getrusage's ru_maxrss: Linux carries that across execve, so a child would report its parent's peak.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc status")


def run_watched(command: list[str], env: dict | None = None, cwd: str | None = None) -> dict:
    """Run a command to completion, sampling its peak RSS (VmHWM) until it exits: {seconds, peak, returncode, output}."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env={**os.environ, **(env or {})}
    )
    peak, lines = 0, []
    import threading

    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        try:
            peak = max(peak, peak_rss(process.pid))
        except (OSError, RuntimeError):
            pass
        time.sleep(0.1)
    reader.join()
    return {
        "seconds": time.perf_counter() - started,
        "peak": peak,
        "returncode": process.returncode,
        "output": "".join(lines),
    }


def ratio(ours: float, anchor: float) -> float:
    return ours / anchor if anchor else float("nan")
