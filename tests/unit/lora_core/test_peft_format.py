"""PEFT's on-disk format: our save → our load, our save → PEFT, PEFT's save → ours, refusals."""

import json

import peft
import pytest
import torch
from conftest import build, inputs, output, randomize_b, rel_diff, targets
from safetensors.torch import load_file

from lora_core import AdapterMismatchError, LoraConfig, LoraError, UnsafeFormatError, inject, load_adapter, save_adapter
from lora_core.injection import lora_layers
from lora_core.peft_format import read_peft_config

INTEROP = ["bert", "gpt2", "llama", "mlp"]


def trained(name: str, **config) -> torch.nn.Module:
    model = build(name)
    extra = {"modules_to_save": ["classifier"]} if name == "bert" else {}
    inject(model, LoraConfig(**({"r": 4, "alpha": 8, "target_modules": targets(name)} | extra | config)))
    randomize_b(model, std=0.3)
    if name == "bert":
        with torch.no_grad():
            model.classifier.modules_to_save["default"].weight.add_(0.5)
    return model


@pytest.mark.parametrize("name", INTEROP)
def test_save_then_load_gives_the_same_outputs(name, tmp_path):
    model = trained(name)
    x = inputs(name)
    expected = output(model, x)
    save_adapter(model, tmp_path)
    loaded = load_adapter(build(name), tmp_path)
    assert rel_diff(output(loaded, x), expected) <= 1e-6
    assert not any(p.requires_grad for p in loaded.parameters())


def test_saved_files_follow_peft_names_and_config(tmp_path):
    save_adapter(trained("bert"), tmp_path, base_model_name_or_path="tiny-bert")
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert "base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight" in keys
    assert "base_model.model.classifier.weight" in keys and len(keys) == 4 * 2 + 2
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    expected = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["query", "value"],
        "use_rslora": False,
        "fan_in_fan_out": False,
        "modules_to_save": ["classifier"],
        "base_model_name_or_path": "tiny-bert",
        "bias": "none",
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    assert {k: config[k] for k in expected} == expected
    written = expected.keys() | {"task_type", "lora_dropout", "init_lora_weights", "inference_mode"}
    assert set(config) == written  # no key an older PEFT would not know (use_dora, lora_bias)


@pytest.mark.parametrize(
    "name, config",
    [
        ("bert", {}),
        ("gpt2", {}),
        ("llama", {}),
        ("mlp", {}),
        ("llama", {"use_rslora": True, "rank_pattern": {"down_proj": 2}, "alpha_pattern": {"v_proj": 3.0}}),
        ("gpt2", {"target_modules": "all-linear"}),
        ("llama", {"init": "pissa"}),
        ("gpt2", {"init": "pissa", "use_rslora": True}),
    ],
)
def test_peft_loads_our_adapter_with_the_same_outputs(name, config, tmp_path):
    model = trained(name, **config)
    x = inputs(name)
    expected = output(model, x)
    save_adapter(model, tmp_path)
    theirs = peft.PeftModel.from_pretrained(build(name), str(tmp_path)).eval()
    assert rel_diff(output(theirs, x), expected) <= 1e-5


@pytest.mark.parametrize(
    "name, config",
    [
        ("bert", {}),
        ("gpt2", {}),
        ("llama", {"use_rslora": True}),
        ("mlp", {}),
        ("llama", {"target_modules": "all-linear", "rank_pattern": {"o_proj": 2}}),
    ],
)
def test_we_load_peft_adapters_with_peft_outputs(name, config, tmp_path):
    extra = (
        {"modules_to_save": ["classifier"]} if name == "bert" else {"fan_in_fan_out": True} if name == "gpt2" else {}
    )
    peft_config = peft.LoraConfig(
        **({"r": 4, "lora_alpha": 8, "target_modules": targets(name), "init_lora_weights": False} | extra | config)
    )
    torch.manual_seed(5)
    theirs = peft.get_peft_model(build(name), peft_config).eval()
    x = inputs(name)
    expected = output(theirs, x)
    theirs.save_pretrained(str(tmp_path))
    ours = load_adapter(build(name), tmp_path)
    assert rel_diff(output(ours, x), expected) <= 1e-5
    assert rel_diff(expected, output(build(name), x)) > 1e-4  # the adapter really changes the output


def test_adapter_for_other_modules_is_refused_and_model_untouched(tmp_path):
    save_adapter(trained("llama", target_modules=["q_proj"]), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(config | {"target_modules": ["k_proj"]}))
    model = build("llama")
    with pytest.raises(
        AdapterMismatchError,
        match=r"missing weights for model\.layers\.0\.self_attn\.k_proj.*"
        r"modules this model lacks: model\.layers\.0\.self_attn\.q_proj",
    ):
        load_adapter(model, tmp_path)
    assert not lora_layers(model)


def test_adapter_with_wrong_shapes_is_refused(tmp_path):
    save_adapter(trained("mlp"), tmp_path)
    wider = build("mlp")
    wider.fc1 = torch.nn.Linear(12, 30)
    wider.fc2 = torch.nn.Linear(30, 16)
    with pytest.raises(AdapterMismatchError, match=r"wrong shapes: fc1\.lora_B\.weight \(24, 4\) != \(30, 4\)"):
        load_adapter(wider, tmp_path)
    assert not lora_layers(wider)


def test_pickle_weights_are_refused(tmp_path):
    save_adapter(trained("mlp"), tmp_path)
    (tmp_path / "adapter_model.safetensors").rename(tmp_path / "adapter_model.bin")
    with pytest.raises(UnsafeFormatError, match="adapter_model.bin is a pickle file.*safetensors only"):
        load_adapter(build("mlp"), tmp_path)


def test_folder_without_adapter_is_refused(tmp_path):
    with pytest.raises(LoraError, match="no adapter_config.json"):
        load_adapter(build("mlp"), tmp_path)


def test_unsupported_peft_variants_are_refused(tmp_path):
    save_adapter(trained("mlp"), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(config | {"use_dora": True}))
    with pytest.raises(AdapterMismatchError, match="use_dora"):
        load_adapter(build("mlp"), tmp_path)


@pytest.mark.parametrize(
    "damage, match",
    [
        ({"r": 0}, "r=0: the rank must be a positive integer"),
        ({"target_modules": None}, "target_modules"),
        ({"r": "four"}, "adapter_config.json: r: Input should be a valid integer"),
        ({"peft_type": "IA3"}, "peft_type 'IA3' is not LORA"),
    ],
)
def test_damaged_config_is_refused_with_the_cause(tmp_path, damage, match):
    save_adapter(trained("mlp"), tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps(config | damage))
    with pytest.raises(AdapterMismatchError, match=match):
        load_adapter(build("mlp"), tmp_path)


def test_nulls_and_keys_of_newer_peft_versions_read_as_peft_reads_them(tmp_path):
    """PEFT writes null for an unset pattern or flag, and each version adds keys: both load."""
    model = trained("mlp")
    save_adapter(model, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    nulls = {"rank_pattern": None, "alpha_pattern": None, "use_dora": None, "use_rslora": None, "lora_bias": None}
    (tmp_path / "adapter_config.json").write_text(json.dumps(config | nulls | {"layer_replication": None, "x": 1}))
    read = read_peft_config(tmp_path)
    assert read.rank_pattern == {} and not read.use_dora and read.max_rank == 4 and read.as_json()["x"] == 1
    x = inputs("mlp")
    assert rel_diff(output(load_adapter(build("mlp"), tmp_path), x), output(model, x)) < 1e-6
