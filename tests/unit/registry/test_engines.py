"""promotion.serve_with: the loading rules of vLLM, LoRAX and TGI refuse an adapter before anything is uploaded;
`loraops adapters serve-config` prints what the engine needs to serve production."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build, randomize_b

from lora_core import LoraConfig, inject, save_adapter
from lora_core.peft_format import PeftConfig
from pipelines.cli.main import main
from registry import AdapterRegistry, RegistrySettings
from registry.engines import AdapterTraits, NotServableError, check_engine_rules, max_lora_rank

LORAOPS = str(Path(sys.executable).parent / "loraops")
LOADER = "pipelines.pyfunc"  # the pyfunc loader module of every registered MLflow Model
VALID = {
    "peft_type": "LORA",
    "task_type": "CAUSAL_LM",
    "r": 16,
    "lora_alpha": 32,
    "target_modules": ["q_proj", "v_proj"],
    "modules_to_save": None,
    "bias": "none",
    "base_model_name_or_path": "org/llama",
}


def adapter(config: dict | None = None, modules=("q_proj", "v_proj"), model_type="llama") -> AdapterTraits:
    return AdapterTraits(PeftConfig(**VALID | (config or {})), frozenset(modules), model_type, "org/llama")


@pytest.mark.parametrize("engine", ["vllm", "lorax", "tgi"])
def test_a_llama_adapter_on_its_named_base_passes_every_engine(engine):
    check_engine_rules(engine, adapter(), "t v1")
    check_engine_rules("any", adapter({"task_type": "SEQ_CLS", "modules_to_save": ["classifier"]}), "t v1")


@pytest.mark.parametrize(
    "engine, change, rule",
    [
        ("vllm", {"config": {"task_type": "SEQ_CLS"}}, "serves adapters of causal LMs only"),
        ("vllm", {"config": {"modules_to_save": ["lm_head"]}}, r"modules_to_save \['lm_head'\]"),
        ("vllm", {"config": {"use_dora": True}}, "DoRA adapters are not supported"),
        ("vllm", {"config": {"bias": "lora_only"}}, "bias 'lora_only' is not supported"),
        (
            "vllm",
            {"config": {"r": 8, "rank_pattern": {"q_proj": 1024}}},
            "rank 1024 is above the largest --max-lora-rank",
        ),
        ("vllm", {"model_type": "bert"}, "no LoRA support for base architecture 'bert'"),
        ("vllm", {"model_type": "gpt2"}, "no LoRA support for base architecture 'gpt2'"),
        ("vllm", {"modules": ("q_proj", "qq_proj")}, r"target modules \['qq_proj'\] are not LoRA layers"),
        ("lorax", {"modules": ("q_proj", "lm_head")}, r"target modules \['lm_head'\] are not LoRA layers"),
        ("lorax", {"config": {"base_model_name_or_path": "/home/me/llama"}}, "is not the base it is started with"),
        ("tgi", {"model_type": "gpt2"}, "no LoRA support for base architecture 'gpt2'"),
    ],
)
def test_each_engine_rule_refuses_with_its_own_message(engine, change, rule):
    with pytest.raises(NotServableError, match=rule) as error:
        check_engine_rules(engine, adapter(**change), "t v1")
    assert "promotion.serve_with: any" in str(error.value) and "\n" not in str(error.value)


def test_max_lora_rank_is_the_smallest_allowed_value_that_holds_the_rank():
    assert [max_lora_rank(r) for r in (1, 2, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]


@pytest.fixture
def llama_versions(tmp_path, embedded_home):
    """A tiny Llama base and two versions on it: a plain q/v adapter (v1) and one that also saves lm_head (v2)."""
    registry = AdapterRegistry(RegistrySettings.from_env())
    model = build("llama")
    model.save_pretrained(tmp_path / "base")
    base = registry.register_base(tmp_path / "base", name="tiny/llama")
    for version, saved in ((1, []), (2, ["lm_head"])):
        model = build("llama")
        inject(
            model,
            LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=saved, task_type="CAUSAL_LM"),
        )
        randomize_b(model, seed=version)
        save_adapter(model, tmp_path / f"adapter-{version}", base_model_name_or_path="tiny/llama")
        registry.register("chat", tmp_path / f"adapter-{version}", base, "a" * 64, {"loss": 1.0}, loader_module=LOADER)
    return registry, tmp_path


def test_promotion_refuses_an_adapter_the_engine_would_not_load_and_uploads_nothing(llama_versions):
    registry, tmp_path = llama_versions
    with pytest.raises(
        NotServableError, match=r"chat v2: vLLM will not load this adapter: modules_to_save \['lm_head'\]"
    ):
        registry.promote("chat", 2, "adapter", serve_with="vllm", progress=False)
    assert not (tmp_path / "home" / "promoted" / "chat").exists() and "production" not in registry.aliases("chat")
    promoted = registry.promote("chat", 1, "adapter", serve_with="vllm", progress=False)
    assert registry.aliases("chat")["production"] == 1 and Path(promoted.uri, "manifest.json").exists()


def test_serve_config_prints_the_vllm_command_for_production(llama_versions, capsys):
    registry, tmp_path = llama_versions
    registry.promote("chat", 1, "adapter", progress=False)
    assert main(["adapters", "serve-config", "chat", "--engine", "vllm"]) == 0
    out = capsys.readouterr().out
    command = next(line for line in out.splitlines() if line.startswith("vllm serve"))
    assert "vllm serve tiny/llama --enable-lora --max-loras 1 --max-lora-rank 8 --lora-modules" in command
    module = json.loads(command.split("--lora-modules ", 1)[1].strip("'"))
    assert module == {
        "name": "chat",
        "path": str(tmp_path / "home" / "promoted" / "chat" / "v1" / "adapter"),
        "base_model_name": "tiny/llama",
    }
    assert (Path(module["path"]) / "adapter_config.json").exists()
    assert main(["adapters", "serve-config", "--engine", "lorax", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert [(g["base"], [a["name"] for a in g["adapters"]]) for g in groups] == [("tiny/llama", ["chat"])]


def test_a_task_file_an_engine_cannot_serve_fails_before_training(tmp_path):
    task = tmp_path / "t.yaml"
    task.write_text(
        "task: sections\ntype: classification\ndata: {path: data.jsonl}\n"
        "lora: {r: 8, alpha: 16, target_modules: [query, value], modules_to_save: [classifier]}\n"
        "training: {max_steps: 5}\npromotion: {mode: adapter, serve_with: vllm}\n"
    )
    done = subprocess.run(
        [LORAOPS, "run", str(task)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"LORAOPS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "vLLM will not load this adapter: task_type is 'SEQ_CLS'" in done.stderr
    assert not (tmp_path / "home" / "mlflow.db").exists()
