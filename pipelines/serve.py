"""`loraops serve --engine vllm`: one base and its production adapters in vLLM, for as long as loraops runs.

Everything the user can get wrong is checked before the engine starts (a base with production adapters, each
adapter fetched, verified against the base's weights and vLLM's rules, the port free, the engine installed). The engine then
starts (vllm_engine.py), is waited for until /health answers and /v1/models lists every task, and is recorded in
$LORAOPS_HOME/serving/ so that promotions and rollbacks reach it (live_engine.py). Leaving the block stops it.
"""

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from registry import AdapterRegistry

from .errors import EngineFailed, ServeError
from .live_engine import LiveEngine, find_live, remove_live, running, write_live
from .serve_set import ServeSet, serve_set
from .vllm_api import served_models
from .vllm_engine import EngineSettings, RunningEngine, check_port, engine_command


@dataclass(frozen=True)
class Serving:
    url: str
    served: ServeSet
    engine: RunningEngine

    def wait(self) -> None:
        """Until the engine exits (EngineFailed with its last error line); Ctrl-C or SIGTERM end it earlier."""
        while self.engine.process.poll() is None:
            time.sleep(0.5)
        raise EngineFailed(f"vLLM exited (code {self.engine.process.returncode}): {self.engine.last_error()}")


@contextlib.contextmanager
def serving(
    registry: AdapterRegistry,
    base: str | None,
    host: str,
    port: int,
    max_rank: int | None = None,
    dtype: str = "auto",
    settings: EngineSettings | None = None,
) -> Iterator[Serving]:
    chosen = serve_set(registry, base, max_rank)
    check_port(host, port)
    settings = settings or EngineSettings.from_env()
    settings.check()
    home = registry.settings.home
    other = find_live(home, chosen.fingerprint)
    if other is not None and running(other):
        raise ServeError(f"{chosen.base} is served already at {other.url} (pid {other.pid}); stop that one first")
    url = f"http://{host}:{port}"
    adapters = [(a.adapter, a.folder) for a in chosen.adapters]
    command = engine_command(settings, chosen.base_path, chosen.base, adapters, chosen.sizing, host, port, dtype)
    engine = RunningEngine(command, home / "serving" / f"vllm-{port}.log")
    live = LiveEngine(
        url=url,
        pid=engine.pid,
        base=chosen.base,
        fingerprint=chosen.fingerprint,
        max_lora_rank=chosen.sizing.max_lora_rank,
        adapters={a.adapter.name: a.adapter.version for a in chosen.adapters},
    )
    try:
        engine.wait_healthy(url, settings.startup_timeout)
        missing = sorted(set(live.adapters) - set(served_models(url)))
        if missing:
            raise EngineFailed(f"vLLM started without {', '.join(missing)}: {engine.last_error()}")
        write_live(home, live)
        yield Serving(url, chosen, engine)
    finally:
        remove_live(home, live)
        engine.stop()
