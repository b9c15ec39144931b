"""vLLM's OpenAI-compatible server as a child process of `loraops serve`, run from the engine's own venv.

vLLM pins its own torch and transformers, so it lives in a venv of its own (infra/setup-serve.sh) and nothing of it
is imported here: loraops starts `python -m vllm.entrypoints.openai.api_server` (or `vllm serve`) from that venv
and talks to it over HTTP (vllm_api.py).

The engine dies with loraops, however loraops dies: it runs in a process group of its own (vLLM starts worker
processes), and a watchdog (engine_watchdog.py) kills that group when loraops is gone, even after a SIGKILL.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from .engine_watchdog import group_alive
from .errors import EngineFailed, ServeError, SettingError
from .prefect_server import die_with_parent
from .vllm_api import healthy

if TYPE_CHECKING:  # the registry (MLflow) loads in seconds; starting and stopping an engine needs none of it
    from .serve_plan import ServedAdapter, Sizing

INSTALL = "LORAOPS_SERVE=vllm bash infra/setup.sh"
DEFAULT_PYTHON = Path(__file__).resolve().parent.parent / ".venv-serve" / "bin" / "python"
STARTUP_TIMEOUT = 600.0  # seconds: the first start on CPU compiles kernels and loads every adapter
# On a machine without a GPU, vLLM's CPU backend: VLLM_CPU_KVCACHE_SPACE is the KV cache in GiB, and
# --gpu-memory-utilization the share of host memory the engine may reserve (its default, 0.9, is refused when
# other processes hold memory).
CPU_ENVIRONMENT = {"VLLM_CPU_KVCACHE_SPACE": "1"}
CPU_MEMORY_SHARE = 0.3


class EngineSettings(BaseModel):
    """Where the engine is and how it is started, from the environment.

    LORAOPS_VLLM: the python of a venv with vLLM (default .venv-serve/bin/python beside the project), or a `vllm`
    executable. LORAOPS_VLLM_ARGS: more arguments for the engine, as a shell would split them."""

    model_config = ConfigDict(frozen=True)
    executable: Path
    extra_args: list[str] = []
    startup_timeout: float = STARTUP_TIMEOUT

    @classmethod
    def from_env(cls) -> "EngineSettings":
        import shlex

        executable = Path(os.environ.get("LORAOPS_VLLM") or DEFAULT_PYTHON).expanduser()
        args = os.environ.get("LORAOPS_VLLM_ARGS", "")
        try:
            extra = shlex.split(args)
        except ValueError as e:  # an unbalanced quote
            raise SettingError(f"LORAOPS_VLLM_ARGS={args!r}: {e}; quote it as a shell would") from None
        return cls(executable=executable, extra_args=extra)

    def check(self) -> None:
        """Refuse (ServeError) an engine that is not there, in one line that says how to install it."""
        if not os.access(self.executable, os.X_OK):
            raise ServeError(
                f"vLLM is not installed ({self.executable} does not exist); build its venv with `{INSTALL}`, "
                f"or set LORAOPS_VLLM to the python of a venv that has vLLM"
            )
        if self.executable.name == "vllm":
            return
        found = subprocess.run(
            [str(self.executable), "-c", "import importlib.util as u; print(u.find_spec('vllm') is not None)"],
            capture_output=True,
            text=True,
        )
        if found.stdout.strip() != "True":
            raise ServeError(
                f"{self.executable} has no vLLM; build its venv with `{INSTALL}`, or set LORAOPS_VLLM to the python "
                f"of a venv that has vLLM"
            )


def has_gpu() -> bool:
    return Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").exists()


def engine_command(
    settings: EngineSettings,
    base_path: Path,
    base_name: str,
    adapters: "list[tuple[ServedAdapter, Path]]",
    sizing: "Sizing | None",
    host: str,
    port: int,
    dtype: str = "auto",
) -> list[str]:
    """The engine's command line: the base served under its registered name, every adapter under its task name
    (read from its verified local copy), LoRA slots and ranks sized from the registry (serve_plan.size); no LoRA
    at all when `sizing` is None (a merged model). dtype "auto": vLLM's choice (on CPU it downcasts float32 to
    bfloat16; float32 serves as our own prediction computes)."""
    import json

    if settings.executable.name == "vllm":
        command = [str(settings.executable), "serve", str(base_path)]
    else:
        command = [str(settings.executable), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base_path)]
    command += ["--served-model-name", base_name, "--host", host, "--port", str(port), "--dtype", dtype]
    if sizing is not None:
        command += ["--enable-lora", "--max-loras", str(sizing.max_loras), "--max-lora-rank", str(sizing.max_lora_rank)]
        command += ["--max-cpu-loras", str(sizing.max_cpu_loras)]
    if adapters:
        command.append("--lora-modules")
        command += [
            json.dumps({"name": a.name, "path": str(path), "base_model_name": base_name}) for a, path in adapters
        ]
    if not has_gpu():
        command += ["--gpu-memory-utilization", str(CPU_MEMORY_SHARE)]
    return command + settings.extra_args


def engine_environment() -> dict[str, str]:
    """The engine's environment: runtime LoRA loading on (promotion and rollback reach it without a restart),
    the CPU backend's memory settings where there is no GPU, anything the user set first."""
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **({} if has_gpu() else CPU_ENVIRONMENT)}
    return {**env, **os.environ}


def check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            raise ServeError(f"port {port} on {host} is in use; pick another with --port") from None


class RunningEngine:
    """The engine process (leader of its own process group) and the watchdog that kills the group if we die."""

    def __init__(self, command: list[str], log: Path):
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                command,
                env=engine_environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "pipelines.engine_watchdog", str(os.getpid()), str(self.process.pid)],
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_healthy(self, url: str, timeout: float) -> None:
        """Until the engine answers /health; EngineFailed with its last error line if it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineFailed(f"vLLM exited at start (code {self.process.returncode}): {self.last_error()}")
            if healthy(url):
                return
            time.sleep(0.5)
        raise EngineFailed(f"vLLM did not answer {url}/health within {timeout:.0f}s: {self.last_error()}")

    def last_error(self) -> str:
        """The engine's last error line (else its last line), and where its whole log is."""
        lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line]
        last = (errors or lines or ["no output"])[-1]
        return f"{last[-300:]} (log: {self.log})"

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM to the engine's group (vLLM shuts its workers down), SIGKILL to what is left after `timeout`."""
        signal_group(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while group_alive(self.process.pid) and time.monotonic() < deadline:
            self.process.poll()  # reap the leader, else its group lives on as a zombie
            time.sleep(0.2)
        signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.watchdog.terminate()
        self.watchdog.wait()


def signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
