"""`loraops serve --engine vllm` on the real engine (vLLM's CPU build from .venv-serve): one base, its production
adapters under their task names, parity with our own transformers prediction, promotion and rollback reaching the
live engine, vLLM's loading rules against registry/engines.py, and no engine left after any kill.

One engine serves the module's tests (a start costs tens of seconds on two cores); the tests run in file order and
the last one kills it."""

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from llama_serving import BASE_NAME, llama_adapter, needs_vllm, register_llama_task, tiny_llama
from transformers import AutoTokenizer, LlamaForCausalLM

from lora_core import load_adapter as load_adapter_here
from lora_core.peft_format import read_peft_config
from pipelines.data import encode_prompt
from pipelines.engine_watchdog import group_alive
from pipelines.errors import EngineFailed
from pipelines.live_engine import find_live, swap
from pipelines.prefect_server import free_port
from pipelines.serving import AdapterSwitcher
from pipelines.vllm_api import complete, load_adapter, served_models, unload_adapter
from pipelines.vllm_engine import EngineSettings, RunningEngine, engine_command
from registry import AdapterRegistry, RegistrySettings
from registry.engines import AdapterTraits, NotServableError, adapted_modules, check_engine_rules

pytestmark = needs_vllm
cli = importlib.import_module("pipelines.cli.main")
PROMPTS = ["a chess engine for the terminal", "an IMAP server"]
TOKENS = 12
# Greedy tokens must be equal; the chosen tokens' log-probabilities agree within this (float32 on both sides: the
# differences are summation order in attention and matmuls).
LOGPROB_TOLERANCE = 2e-3


class Served:
    def __init__(self, home: Path, root: Path, process: subprocess.Popen, url: str, output: list[str]):
        self.home, self.root, self.process, self.url, self.output = home, root, process, url, output
        self.registry = AdapterRegistry(RegistrySettings.from_env(home=home, tracking_uri=None, actor="tester"))


@pytest.fixture(scope="module")
def served(tmp_path_factory, mlflow_template):
    """A registry with `greet` v1..v3 and `shout` v1 on a tiny Llama (greet v1 and shout v1 in production), served
    by `loraops serve` in a process of its own."""
    import shutil

    root = tmp_path_factory.mktemp("vllm")
    home = root / "home"
    home.mkdir()
    shutil.copy(mlflow_template, home / "mlflow.db")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LORAOPS_HOME", str(home))
        for name in ("MLFLOW_TRACKING_URI", "LORAOPS_PROMOTION_TARGET", "PREFECT_API_URL"):
            env.delenv(name, raising=False)
        registry = AdapterRegistry(RegistrySettings.from_env(home=home, tracking_uri=None, actor="tester"))
        base_dir = tiny_llama(root / "base")
        base = registry.register_base(base_dir, name=BASE_NAME)
        for seed in (0, 1):
            merged = root / "greet-merged" if seed == 0 else None
            register_llama_task(registry, "greet", llama_adapter(root / f"greet-{seed}", base_dir, seed, merged), base)
        register_llama_task(registry, "greet", llama_adapter(root / "greet-r16", base_dir, 3, r=16), base)
        register_llama_task(registry, "shout", llama_adapter(root / "shout", base_dir, 5), base)
        registry.promote("greet", 1, progress=False)
        registry.promote("shout", 1, progress=False)
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli.main", "serve", "--port", str(port), "--dtype", "float32"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=os.environ.copy(),
        )
        output = wait_for_line(process, "Ctrl-C stops it")
        yield Served(home, root, process, f"http://127.0.0.1:{port}", output)
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)


def wait_for_line(process: subprocess.Popen, text: str) -> list[str]:
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip())
        if text in line:
            return lines
    raise AssertionError(f"loraops serve ended (code {process.wait()}) before '{text}':\n" + "\n".join(lines))


@torch.no_grad()
def greedy(model, tokenizer, prompt: str) -> tuple[list[int], list[float]]:
    """Greedy tokens of our own transformers model, with their log-probabilities, step by step."""
    ids = torch.tensor([encode_prompt(tokenizer, prompt, False)])
    tokens, logprobs = [], []
    for _ in range(TOKENS):
        logits = model(input_ids=ids).logits[0, -1].float().log_softmax(-1)
        token = int(logits.argmax())
        tokens.append(token)
        logprobs.append(float(logits[token]))
        if token == tokenizer.sep_token_id:  # the base's eos: generation stops there
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens, logprobs


def our_greedy(switcher: AdapterSwitcher, ref: str, prompt: str) -> tuple[str, list[int], list[float]]:
    """Our own prediction (AdapterSwitcher.predict) and, from the same model, the greedy tokens."""
    text = switcher.predict(ref, [prompt], max_new_tokens=TOKENS)[0].completion
    return text, *greedy(switcher.model, switcher.tokenizer, prompt)


def assert_parity(url: str, model: str, switcher: AdapterSwitcher, ref: str) -> list[list[int]]:
    outputs = []
    for prompt in PROMPTS:
        served = complete(url, model, prompt, TOKENS)
        text, tokens, logprobs = our_greedy(switcher, ref, prompt)
        assert served.token_ids == tokens, (model, prompt)
        assert served.text == text
        assert max(abs(a - b) for a, b in zip(served.logprobs, logprobs)) < LOGPROB_TOLERANCE
        outputs.append(tokens)
    return outputs


def test_serve_answers_each_task_by_name_as_our_own_prediction(served):
    assert any("model 'greet': greet v1" in line for line in served.output)
    assert any("model 'shout': shout v1" in line for line in served.output)
    assert set(served_models(served.url)) == {BASE_NAME, "greet", "shout"}
    live = find_live(served.home, served.registry.resolve("greet").base_fingerprint)
    assert live is not None and live.adapters == {"greet": 1, "shout": 1} and live.max_lora_rank == 8
    switcher = AdapterSwitcher(served.registry)
    greet = assert_parity(served.url, "greet", switcher, "greet")
    shout = assert_parity(served.url, "shout", switcher, "shout")
    base = [complete(served.url, BASE_NAME, prompt, TOKENS).token_ids for prompt in PROMPTS]
    assert greet != base and shout != base and greet != shout  # each name answers with its own adapter


def test_the_merged_model_in_vllm_answers_as_the_adapter(served, tmp_path):
    """vLLM on the merged model = vLLM with the unmerged adapter = our prediction."""
    switcher = AdapterSwitcher(served.registry)
    port = free_port()
    merged = served.root / "greet-merged"
    command = engine_command(EngineSettings.from_env(), merged, "greet-merged", [], None, "127.0.0.1", port, "float32")
    engine = RunningEngine(command, tmp_path / "merged.log")
    try:
        engine.wait_healthy(f"http://127.0.0.1:{port}", 600)
        assert_parity(f"http://127.0.0.1:{port}", "greet-merged", switcher, "greet:1")
    finally:
        engine.stop()
    assert not group_alive(engine.pid)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_promotion_and_rollback_reach_the_live_engine_without_a_restart(served, capsys, monkeypatch):
    monkeypatch.setenv("LORAOPS_HOME", str(served.home))
    switcher = AdapterSwitcher(served.registry)
    pid = find_live(served.home, served.registry.resolve("greet").base_fingerprint).pid
    code, out, _ = run_cli(capsys, "promote", "greet", "--version", "2")
    assert code == 0 and "now serves greet v2 (was v1); it answered" in out
    assert_parity(served.url, "greet", switcher, "greet:2")
    assert sorted(served_models(served.url)) == sorted([BASE_NAME, "greet", "shout"])  # no staging name left
    code, out, _ = run_cli(capsys, "rollback", "greet")
    assert code == 0 and "now serves greet v1 (was v2)" in out
    assert_parity(served.url, "greet", switcher, "greet:1")
    assert find_live(served.home, served.registry.resolve("greet").base_fingerprint).pid == pid  # same engine


def test_an_adapter_above_the_engines_rank_is_refused_before_promotion_and_by_the_engine(served, capsys, monkeypatch):
    monkeypatch.setenv("LORAOPS_HOME", str(served.home))
    code, _, err = run_cli(capsys, "promote", "greet", "--version", "3")
    assert code == 2 and "rank 16, above the --max-lora-rank 8" in err
    assert served.registry.aliases("greet")["production"] == 1  # nothing promoted
    # The engine itself refuses it, and keeps serving what it served.
    live = find_live(served.home, served.registry.resolve("greet").base_fingerprint)
    before = complete(served.url, "greet", PROMPTS[0], TOKENS).token_ids
    with pytest.raises(EngineFailed, match="did not take greet v3.*keeps serving greet v1"):
        swap(live, "greet", 3, 1, str(served.registry.fetch("greet", 3)))
    assert complete(served.url, "greet", PROMPTS[0], TOKENS).token_ids == before
    assert sorted(served_models(served.url)) == sorted([BASE_NAME, "greet", "shout"])


# adapter_config.json keys (or LoraConfig settings) -> the rule of README "Serving engines" it exercises
RULE_CASES = {
    "accepted: r 8 on q_proj, v_proj": ({}, {}),
    "accepted: every linear layer": (
        {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
        {},
    ),
    "rank over --max-lora-rank": ({"r": 16}, {}),
    "accepted: lm_head (vLLM has a LoRA layer for it on Llama)": ({"target_modules": ["q_proj", "lm_head"]}, {}),
    "a module Llama does not have": ({}, {"target_modules": ["qq_proj", "v_proj"]}),
    "DoRA": ({}, {"use_dora": True}),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, {}),
    "bias": ({}, {"bias": "lora_only"}),
    "another base_model_name_or_path": ({}, {"base_model_name_or_path": "org/other-llama"}),
}


def rename_module(folder: Path, old: str, new: str) -> None:
    """The adapter's weights under a module name the base does not have (as an adapter for another model)."""
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    save_file({k.replace(f".{old}.", f".{new}."): v for k, v in load_file(path).items()}, path)


def ours_refuses(folder: Path, max_lora_rank: int) -> str | None:
    config = read_peft_config(folder)
    if config.max_rank > max_lora_rank:  # what serve and promote check against the live engine
        return f"rank {config.max_rank} > {max_lora_rank}"
    try:
        check_engine_rules("vllm", AdapterTraits(config, adapted_modules(folder), "llama", BASE_NAME), "case")
    except NotServableError as e:
        return str(e)
    return None


def test_vllm_refuses_what_loraops_refuses_and_accepts_what_it_accepts(served, tmp_path):
    live = find_live(served.home, served.registry.resolve("greet").base_fingerprint)
    verdicts = {}
    tokenizer = AutoTokenizer.from_pretrained(served.root / "base")
    for i, (case, (lora, config)) in enumerate(RULE_CASES.items()):
        folder = llama_adapter(tmp_path / f"case-{i}", served.root / "base", i, config=config, **lora)
        if "qq_proj" in str(config):
            rename_module(folder, "q_proj", "qq_proj")
        name = f"rule-case-{i}"
        try:
            load_adapter(served.url, name, str(folder))
            answer = complete(served.url, name, PROMPTS[0], TOKENS).token_ids
            engine = None
            if ours_refuses(folder, live.max_lora_rank) is None:  # accepted by both: it answers as ours does
                model = LlamaForCausalLM.from_pretrained(served.root / "base")
                load_adapter_here(model, folder)
                assert answer == greedy(model, tokenizer, PROMPTS[0])[0], case
        except EngineFailed as e:
            engine = str(e)
        finally:
            unload_adapter(served.url, name, missing_ok=True)
        verdicts[case] = (engine, ours_refuses(folder, live.max_lora_rank))
    print(json.dumps(verdicts, indent=2))
    # vLLM compares base_model_name_or_path with the served model only in its filesystem resolver (loading by name,
    # what serve-config sets up past 16 adapters); loaded by path, as here, it does not look. The rule stays.
    by_path_only = "another base_model_name_or_path"
    assert verdicts[by_path_only][0] is None and "base_model_name_or_path" in str(verdicts[by_path_only][1])
    disagreements = {c: v for c, v in verdicts.items() if (v[0] is None) != (v[1] is None) and c != by_path_only}
    assert not disagreements, disagreements
    assert verdicts["accepted: r 8 on q_proj, v_proj"] == (None, None)


def test_killing_serve_leaves_no_engine_and_a_promotion_says_the_engine_did_not_take_it(served, capsys, monkeypatch):
    live = find_live(served.home, served.registry.resolve("greet").base_fingerprint)
    served.process.kill()  # SIGKILL: loraops cannot clean up; PR_SET_PDEATHSIG and the watchdog do
    served.process.wait()
    deadline = time.monotonic() + 30
    while group_alive(live.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(live.pid)
    monkeypatch.setenv("LORAOPS_HOME", str(served.home))
    code, out, _ = run_cli(capsys, "promote", "greet", "--version", "2")
    assert code == 0 and "production: 1 -> 2" in out
    assert "is not running: it did not take greet v2" in out
    assert find_live(served.home, live.fingerprint) is None
