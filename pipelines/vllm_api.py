"""The few calls loraops makes to a running vLLM server (OpenAI-compatible API plus its LoRA endpoints), over HTTP.

Runtime loading (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`) needs the engine started with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, which vllm_engine.py sets.
"""

from typing import Any, NamedTuple

import httpx

from .errors import EngineFailed

TIMEOUT = 120.0  # seconds: a load on a busy CPU engine reads the adapter and waits for the running batch


class Completion(NamedTuple):
    text: str
    token_ids: list[int]
    logprobs: list[float]  # of each chosen token


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def served_models(url: str) -> list[str]:
    """The names /v1/models lists: the base under its served name, then each adapter under its own."""
    return [m["id"] for m in _call("GET", f"{url}/v1/models")["data"]]


def load_adapter(url: str, name: str, path: str, in_place: bool = False) -> None:
    """Load the PEFT folder at `path` (on the engine's host) under `name`; EngineFailed with the engine's reason.
    in_place: `name` is loaded already, and its weights are replaced (vLLM keeps the old ones if the load fails)."""
    _call("POST", f"{url}/v1/load_lora_adapter", {"lora_name": name, "lora_path": path, "load_inplace": in_place})


def unload_adapter(url: str, name: str, missing_ok: bool = False) -> None:
    try:
        _call("POST", f"{url}/v1/unload_lora_adapter", {"lora_name": name})
    except EngineFailed:
        if not missing_ok:
            raise


def complete(url: str, model: str, prompt: str, max_tokens: int = 16) -> Completion:
    """Greedy completion of `prompt` by `model` (the base or an adapter's name), tokenized as loraops trains
    causal-LM tasks (no special tokens added), with the chosen tokens' ids and log-probabilities."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "logprobs": 1,
        "add_special_tokens": False,
        "return_tokens_as_token_ids": True,  # tokens come back as "token_id:<id>"
    }
    choice = _call("POST", f"{url}/v1/completions", body)["choices"][0]
    tokens, logprobs = choice["logprobs"]["tokens"], choice["logprobs"]["token_logprobs"]
    return Completion(choice["text"], [int(t.removeprefix("token_id:")) for t in tokens], [float(x) for x in logprobs])


def _call(method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        response = httpx.request(method, url, json=body, timeout=TIMEOUT)
    except httpx.HTTPError as e:
        raise EngineFailed(f"vLLM at {url} did not answer ({type(e).__name__}: {e})") from None
    if response.status_code != 200:
        raise EngineFailed(f"vLLM refused {url.rsplit('/', 1)[-1]} ({response.status_code}): {reason(response)}")
    return response.json() if response.headers.get("content-type", "").startswith("application/json") else {}


def reason(response: httpx.Response) -> str:
    """The engine's error message, on one line."""
    try:
        body = response.json()
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("message")
    except ValueError:
        message = None
    return " ".join(str(message or response.text).split())[:500]
