"""Many tasks on one base at serve time, in vLLM on this machine (--only serving): the LoRA paper's case for one
deployed base that switches tasks per request.

The base: a Llama of 4 layers, hidden 512, 8 heads of 64 (vLLM's CPU attention needs head_dim >= 64), MiniLM's
tokenizer, random bf16 weights (bench/models.py "serving"); each task an all-linear r=8 adapter with its own random
B, registered and promoted to production. For 1, 8 and 32 production adapters, `loraops serve` (pipelines/serve.py:
the registry's production set, the engine from .venv-serve) serves them all, and a load of streamed greedy
completions spread evenly over the adapters, `concurrency` at once, `tokens` each (ignore_eos), measures generated
tokens per second (vLLM's own count; the median of `repeats` rounds after an untimed one) and the median time to
the first streamed token. The anchor: the merged model alone (the first adapter merged by lora_core's streaming
merge) in the same engine with the same flags, no LoRA. Then, with 8 adapters served (1 in quick mode), `loraops promote` of a new version of one task, timed from the
command's start to its return (it returns once the engine answered with the new version; /v1/models then names the
new version's folder), against what a restart would cost: `loraops serve`'s own start with that many adapters.

    python -m bench --only serving
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

BASE_NAME = "bench-llama"
PROMPTS = ["a chess engine for the terminal", "an IMAP server", "a library for parsing YAML", "a font for code"]


@dataclass(frozen=True)
class Load:
    adapter_counts: tuple[int, ...]
    requests: int  # at least this many, and at least two per adapter
    concurrency: int
    tokens: int  # generated per request
    repeats: int

    def jobs(self, models: list[str]) -> list[tuple[str, str]]:
        count = max(self.requests, 2 * len(models))
        return [(models[i % len(models)], PROMPTS[i % len(PROMPTS)]) for i in range(count)]


FULL = Load(adapter_counts=(1, 8, 32), requests=64, concurrency=8, tokens=32, repeats=3)
QUICK = Load(adapter_counts=(1,), requests=8, concurrency=4, tokens=8, repeats=1)


def stream_one(url: str, model: str, prompt: str, tokens: int) -> tuple[float, int]:
    """(seconds to the first streamed token, tokens generated) of one streamed greedy completion."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started, first, generated = time.perf_counter(), None, 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if first is None and any(c.get("text") for c in chunk.get("choices", [])):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    if first is None or generated == 0:
        raise RuntimeError(f"{model} streamed no tokens from {url}")
    return first, generated


@dataclass(frozen=True)
class Measured:
    rate: float  # generated tokens per second, the median repeat
    first: float  # median seconds to the first token, over every request of every repeat
    rates: list[float]  # of each repeat

    @property
    def spread(self) -> str:
        return f"{len(self.rates)} repeats: {min(self.rates):.0f}-{max(self.rates):.0f} tok/s"


def measure(url: str, models: list[str], load: Load) -> Measured:
    """`load` spread evenly over `models`, after one untimed round that sends every model a short request,
    `concurrency` at once (the first requests compile kernels and read each adapter into its slot)."""

    def run(jobs: list[tuple[str, str]], tokens: int) -> tuple[float, list[float]]:
        started = time.perf_counter()
        with ThreadPoolExecutor(load.concurrency) as pool:
            results = list(pool.map(lambda job: stream_one(url, *job, tokens), jobs))
        return sum(n for _, n in results) / (time.perf_counter() - started), [first for first, _ in results]

    run([(models[i % len(models)], PROMPTS[0]) for i in range(max(load.concurrency, len(models)))], 2)
    repeats = [run(load.jobs(models), load.tokens) for _ in range(load.repeats)]
    rates = [rate for rate, _ in repeats]
    return Measured(statistics.median(rates), statistics.median(f for _, firsts in repeats for f in firsts), rates)


def merged_anchor(settings, base: Path, adapter: Path, root: Path, load: Load) -> Measured:
    """The merged model alone in the engine: the same command `loraops serve` builds, without LoRA."""
    from lora_core.checkpoint_merge import merge_checkpoint
    from pipelines.prefect_server import free_port
    from pipelines.vllm_engine import RunningEngine, engine_command

    merged = root / "merged"
    shutil.rmtree(merged, ignore_errors=True)
    merge_checkpoint(base, adapter, merged)
    (root / "merged.log").unlink(missing_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    engine = RunningEngine(
        engine_command(settings, merged, BASE_NAME, [], None, "127.0.0.1", port), root / "merged.log"
    )
    try:
        engine.wait_healthy(url, settings.startup_timeout)
        return measure(url, [BASE_NAME], load)
    finally:
        engine.stop()


def promote_live(home: Path, registry, url: str, task: str, version: int) -> float:
    """Seconds `loraops promote TASK --version N` takes against a running `loraops serve`, checked: it says the
    engine answered with the new version, and /v1/models names that version's folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "LORAOPS_PROMOTION_TARGET")}
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli.main", "promote", task, "--version", str(version)],
        capture_output=True,
        text=True,
        env={**env, "LORAOPS_HOME": str(home)},
    )
    seconds = time.perf_counter() - began
    if done.returncode or f"now serves {task} v{version}" not in done.stdout:
        raise RuntimeError(f"promote did not reach the engine:\n{done.stdout}{done.stderr}")
    served = {m["id"]: m["root"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
    if served[task] != str(registry.fetch(task, version)):
        raise RuntimeError(f"the engine serves {task} from {served[task]}, not v{version}")
    return seconds


def serving_bench(quick: bool, work: Path) -> list[dict]:
    from bench.cases import row
    from bench.models import adapter_for, llama_on_disk
    from pipelines.models import default_base_model
    from pipelines.prefect_server import free_port
    from pipelines.serve import serving
    from pipelines.vllm_engine import EngineSettings
    from registry import AdapterRegistry, RegistrySettings

    settings = EngineSettings.from_env()
    settings.check()  # vLLM's venv: LORAOPS_SERVE=vllm bash infra/setup.sh
    load = QUICK if quick else FULL
    root = work / "serving"
    home = root / "home"
    shutil.rmtree(home, ignore_errors=True)  # a fresh registry each run; the models are kept
    home.mkdir(parents=True)
    registry = AdapterRegistry(
        RegistrySettings.from_env(
            home=home, tracking_uri=f"sqlite:///{home / 'mlflow.db'}", promotion_target=str(home / "promoted")
        )
    )
    base_dir = llama_on_disk("serving", root / "base", tokenizer=default_base_model())
    base = registry.register_base(base_dir, name=BASE_NAME)
    most = max(load.adapter_counts)
    adapters = [adapter_for(base_dir, root / f"adapter-{i}", r=8, seed=i, base_name=BASE_NAME) for i in range(most + 1)]

    def register(task: str, adapter: Path) -> None:
        registry.register(task, adapter, base, "d" * 64, {"perplexity": 10.0}, loader_module="pipelines.pyfunc")

    for i in range(most):
        register(f"task-{i}", adapters[i])
    register("task-0", adapters[most])  # v2 of task-0: the version promoted while the engine serves
    anchor = merged_anchor(settings, base_dir, adapters[0], root, load)

    rows, promoted, swap = [], 0, None
    for count in load.adapter_counts:
        for i in range(promoted, count):
            registry.promote(f"task-{i}", 1, progress=False)
        promoted = count
        started = time.perf_counter()
        with serving(registry, None, "127.0.0.1", free_port(), settings=settings) as live:
            start_seconds = time.perf_counter() - started
            ours = measure(live.url, [f"task-{i}" for i in range(count)], load)
            if count == min(8, most):
                swap = (count, promote_live(home, registry, live.url, "task-0", 2), start_seconds)
        what = f"vLLM, {count} adapter(s) on one base, {load.concurrency} requests at once, {load.tokens} tokens each"
        note = f"`loraops serve` start {start_seconds:.0f} s; anchor: the merged model alone in the same engine"
        spread = f"; {ours.spread}, anchor {anchor.spread}" if load.repeats > 1 else ""
        rows.append(row(f"{what}: generated tokens/s", ours.rate, anchor.rate, "tok/s", "report", note + spread))
        rows.append(row("  same, median time to first token (s)", ours.first, anchor.first, "s", "report", note))
    if swap:
        count, seconds, restart = swap
        rows.append(
            row(
                f"`loraops promote` to a running `loraops serve` of {count} adapter(s): until the new version answers (s)",
                seconds,
                restart,
                "s",
                "report",
                "anchor: a restart, `loraops serve`'s start with those adapters (its stop not counted)",
            )
        )
    return rows
