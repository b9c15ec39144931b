"""Streaming merge on disk: equals PEFT's merge_and_unload and the in-memory merge, shard layout kept,
bare bases under a task head, refusals before any write, and peak memory bounded by one shard."""

import json
import struct
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import build, inputs, output, randomize_b, rel_diff, targets
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from lora_core import AdapterMismatchError, LoraConfig, inject, merge_and_unload, save_adapter
from lora_core.checkpoint_merge import INDEX_FILE, merge_checkpoint
from lora_core.errors import MergeError, WeightFileError
from lora_core.safetensors_io import read_header


def tensors(folder) -> dict[str, torch.Tensor]:
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            found |= {k: f.get_tensor(k) for k in f.keys()}
    return found


def saved_adapter(name, root, dtype=torch.float32, target_modules=None, **config):
    model = build(name).to(dtype)
    model.save_pretrained(root / "base", max_shard_size="20KB")
    inject(model, LoraConfig(r=4, alpha=8, target_modules=target_modules or targets(name), **config))
    randomize_b(model, std=0.2)
    save_adapter(model, root / "adapter")
    return model


@pytest.mark.parametrize(
    "name,dtype,target_modules",
    [
        ("llama", torch.float32, "all-linear"),
        ("llama", torch.bfloat16, "all-linear"),
        ("gpt2", torch.float32, None),
        ("gpt2", torch.bfloat16, None),
    ],
)
def test_streaming_merge_equals_peft_and_in_memory_merge(name, dtype, target_modules, tmp_path):
    model = saved_adapter(name, tmp_path, dtype, target_modules)
    report = merge_checkpoint(tmp_path / "base", tmp_path / "adapter", tmp_path / "out")
    ours = tensors(tmp_path / "out")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=dtype)
    peft_merged = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload().state_dict()
    in_memory = merge_and_unload(model).state_dict()
    assert report.merged and len(report.shards) > 1
    assert set(ours) == set(tensors(tmp_path / "base"))  # tied lm_head stays tied (not written), as in the base
    for key, value in ours.items():
        assert value.dtype == dtype
        # bf16: both round the same float32 sum once; float32: addmm vs matmul-then-add differ in the last bits.
        atol = 0 if dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(value, peft_merged[key], atol=atol, rtol=0)
        torch.testing.assert_close(value, in_memory[key], atol=atol, rtol=0)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=dtype).eval()
    assert rel_diff(output(loaded, inputs(name)), output(model, inputs(name))) <= (
        1e-5 if dtype == torch.float32 else 3e-2
    )


def test_output_is_sharded_like_the_base_with_config_and_index(tmp_path):
    saved_adapter("llama", tmp_path, torch.bfloat16, "all-linear")
    (tmp_path / "base" / "tokenizer_config.json").write_text("{}")
    merge_checkpoint(tmp_path / "base", tmp_path / "adapter", tmp_path / "out")
    base_files = sorted(p.name for p in (tmp_path / "base").iterdir())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == base_files
    for shard in (tmp_path / "base").glob("*.safetensors"):
        before, after = read_header(shard)[0], read_header(tmp_path / "out" / shard.name)[0]
        assert {k: (e.dtype, e.shape) for k, e in before.items()} == {k: (e.dtype, e.shape) for k, e in after.items()}
    base_index = json.loads((tmp_path / "base" / INDEX_FILE).read_text())
    out_index = json.loads((tmp_path / "out" / INDEX_FILE).read_text())
    assert out_index["weight_map"] == base_index["weight_map"]
    assert out_index["metadata"]["total_size"] == base_index["metadata"]["total_size"]


def test_bare_base_gets_the_task_prefix_and_head(tmp_path):
    """A classifier adapter (paths bert.*, head as a saved module) on a bare BertModel checkpoint."""
    model = build("bert")
    model.bert.save_pretrained(tmp_path / "base")
    inject(model, LoraConfig(r=4, alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]))
    randomize_b(model, std=0.2)
    with torch.no_grad():
        model.classifier.modules_to_save["default"].weight.add_(0.5)
    save_adapter(model, tmp_path / "adapter")
    head = {
        "architectures": ["BertForSequenceClassification"],
        "id2label": {"0": "a", "1": "b", "2": "c"},
        "label2id": {"a": 0, "b": 1, "c": 2},
    }
    report = merge_checkpoint(tmp_path / "base", tmp_path / "adapter", tmp_path / "out", config_updates=head)
    assert report.prefix == "bert." and sorted(report.added) == ["classifier.bias", "classifier.weight"]
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    assert rel_diff(output(merged, inputs("bert")), output(model, inputs("bert"))) <= 1e-5


def test_wrong_shapes_and_missing_modules_are_refused_before_writing(tmp_path):
    saved_adapter("llama", tmp_path / "a", torch.float32)
    torch.manual_seed(0)
    other = AutoModelForCausalLM.from_config(
        build("llama").config.__class__(
            vocab_size=64,
            hidden_size=48,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    )
    other.save_pretrained(tmp_path / "wide")
    with pytest.raises(
        AdapterMismatchError, match=r"model\.layers\.0\.\S+: base weight is \[48, 48\] but the adapter makes"
    ):
        merge_checkpoint(tmp_path / "wide", tmp_path / "a" / "adapter", tmp_path / "out")
    saved_adapter("gpt2", tmp_path / "g", torch.float32)
    with pytest.raises(AdapterMismatchError, match="no weight for adapted module"):
        merge_checkpoint(tmp_path / "a" / "base", tmp_path / "g" / "adapter", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_non_empty_output_and_truncated_base_are_refused(tmp_path):
    saved_adapter("llama", tmp_path, torch.float32)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("user data")
    with pytest.raises(MergeError, match="not empty"):
        merge_checkpoint(tmp_path / "base", tmp_path / "adapter", tmp_path / "out")
    shard = sorted((tmp_path / "base").glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(WeightFileError, match="truncated"):
        merge_checkpoint(tmp_path / "base", tmp_path / "adapter", tmp_path / "out2")


def test_nan_adapter_is_refused(tmp_path):
    model = saved_adapter("llama", tmp_path, torch.float32)
    from safetensors.torch import load_file, save_file

    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    next(v for k, v in weights.items() if "lora_B" in k)[0, 0] = float("nan")
    save_file(weights, tmp_path / "adapter" / "adapter_model.safetensors")
    with pytest.raises(MergeError, match="NaN"):
        merge_checkpoint(tmp_path / "base", tmp_path / "adapter", tmp_path / "out")
    assert model is not None and not (tmp_path / "out").exists()


def test_header_reader_refuses_damaged_files(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(WeightFileError, match="does not fit"):
        read_header(path)
    path.write_bytes(b"\x01")
    with pytest.raises(WeightFileError, match="too short"):
        read_header(path)


PEAK = textwrap.dedent("""
    import json, sys
    import torch
    from lora_core.checkpoint_merge import merge_checkpoint
    def hwm():  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across execve
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    before = hwm()
    merge_checkpoint(sys.argv[1], sys.argv[2], sys.argv[3])
    print(json.dumps({"grew": hwm() - before, "before": before}))
""")


def test_peak_memory_stays_under_one_shard_plus_adapter(tmp_path):
    """~320 MB float32 model in 4 shards: the merge process grows by far less than the model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=8,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path / "base", max_shard_size="90MB")
    inject(model, LoraConfig(r=16, alpha=32, target_modules="all-linear"))
    save_adapter(model, tmp_path / "adapter")
    del model
    shards = [p.stat().st_size for p in (tmp_path / "base").glob("*.safetensors")]
    adapter = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    run = subprocess.run(
        [sys.executable, "-c", PEAK, str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    grew = measured["grew"]
    assert len(shards) >= 4 and sum(shards) > 300e6 and 50e6 < measured["before"] < 1.5e9  # torch imported, no model
    assert grew <= max(shards) + adapter + 32 * 2**20, (grew, max(shards), adapter)


def test_merge_command_checks_the_recorded_base_fingerprint(tmp_path, capsys):
    from pipelines.cli import main
    from registry import fingerprint_weights
    from registry.manifest import MANIFEST_FILE, Manifest

    saved_adapter("llama", tmp_path, torch.float32)
    record = lambda fp: (tmp_path / "adapter" / MANIFEST_FILE).write_bytes(  # noqa: E731  (as a fetched copy has it)
        Manifest(task="t", mode="adapter", base_fingerprint=fp, files={}).to_json()
    )
    record("0" * 64)
    capsys.readouterr()  # the setup's save_pretrained progress bars
    assert main(["merge", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fingerprint 000000000000" in err
    assert not (tmp_path / "out").exists()
    record(fingerprint_weights(tmp_path / "base"))
    assert main(["merge", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "out")]) == 0
    assert "merged 6 weights into 5 shard(s)" in capsys.readouterr().out
    assert main(["merge", str(tmp_path / "nope"), str(tmp_path / "adapter"), str(tmp_path / "o2")]) == 2
