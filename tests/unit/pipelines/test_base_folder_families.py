"""A base folder damaged one way per member, by family (tokenizer, model_type, config.json, weights and index): each is
refused before any work with one line naming the file or folder and what is wrong; `loraops run` exits 2 with
nothing registered, `loraops merge` exits 2 with nothing written in OUT_DIR."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import build, randomize_b, targets
from tasks import data_slice, tiny_base, write_task

from lora_core import LoraConfig, LoraError, inject, save_adapter
from lora_core.checkpoint_merge import INDEX_FILE
from pipelines.cli.main import main
from pipelines.errors import InputError
from pipelines.preflight import check_base_folder

LORAOPS = str(Path(sys.executable).parent / "loraops")
TOKENIZER = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory) -> Path:
    return tiny_base(tmp_path_factory.mktemp("bases") / "base")


def remove(*names):
    def damage(base: Path) -> None:
        for name in names:  # transformers 5 saves a fast tokenizer only: no vocab.txt to remove
            (base / name).unlink(missing_ok=True)

    return damage


def config_with(**changes):
    def damage(base: Path) -> None:
        config = json.loads((base / "config.json").read_text())
        for key, value in changes.items():
            config.pop(key) if value is None else config.__setitem__(key, value)
        (base / "config.json").write_text(json.dumps(config))

    return damage


def write(name: str, content: bytes):
    def damage(base: Path) -> None:
        (base / name).unlink(missing_ok=True)
        (base / name).write_bytes(content)

    return damage


def fifo(name: str):
    def damage(base: Path) -> None:
        (base / name).unlink(missing_ok=True)
        os.mkfifo(base / name)

    return damage


def index_naming(*shards: str):
    return write(INDEX_FILE, json.dumps({"weight_map": {f"w{i}": s for i, s in enumerate(shards)}}).encode())


FAMILIES = {
    "tokenizer": [
        ("none", remove(*TOKENIZER), "no tokenizer files"),
        ("config-only", remove("tokenizer.json", "vocab.txt"), "no tokenizer files"),
        (
            "vocabulary-renamed",
            lambda b: (b / "tokenizer.json").rename(b / "tokenizer.json.bak"),
            "no tok",
        ),
    ],
    "model_type": [
        ("unknown", config_with(model_type="bertx"), "model_type 'bertx' is not an architecture"),
        ("empty", config_with(model_type=""), "names no model_type"),
        ("number", config_with(model_type=3), "names no model_type"),
        ("missing", config_with(model_type=None), "names no model_type"),
    ],
    "config.json": [
        ("list", write("config.json", b"[]"), "the JSON is list, not an object"),
        ("number", write("config.json", b"3"), "the JSON is int, not an object"),
        ("not-json", write("config.json", b"{model_type: bert"), "not valid JSON"),
        ("deep", write("config.json", b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
        ("fifo", fifo("config.json"), "is a FIFO (named pipe), not a regular file"),
    ],
    "weights": [
        ("fifo", fifo("model.safetensors"), "is a FIFO (named pipe), not a regular file"),
        ("garbage", write("model.safetensors", os.urandom(4096)), "does not fit the file"),
        ("header-list", write("model.safetensors", b"\x02" + bytes(7) + b"[]"), "is list, not an object"),
        ("index-missing-shard", index_naming("model.safetensors", "model-2-of-2.safetensors"), "which is not in"),
        ("index-outside", index_naming("../model.safetensors"), "is not a file name in the model folder"),
    ],
}
MEMBERS = [(f"{family}/{name}", damage, says) for family, ms in FAMILIES.items() for name, damage, says in ms]


def damaged(saved_base: Path, tmp_path: Path, damage) -> Path:
    base = Path(shutil.copytree(saved_base, tmp_path / "base"))
    damage(base)
    return base


def test_the_undamaged_base_passes(saved_base):
    assert check_base_folder(saved_base).model_type == "bert"


@pytest.mark.parametrize("member, damage, says", MEMBERS, ids=[m[0] for m in MEMBERS])
def test_every_damaged_base_is_one_line_naming_it(member, damage, says, saved_base, tmp_path):
    base = damaged(saved_base, tmp_path, damage)
    with pytest.raises((InputError, LoraError)) as error:  # both exit 2 at the CLI
        check_base_folder(base)
    message = str(error.value)
    assert "\n" not in message and str(base) in message and says in message, message


@pytest.mark.parametrize("member", ["tokenizer/none", "model_type/unknown", "weights/fifo"])
def test_loraops_run_refuses_before_any_work(member, saved_base, tmp_path, monkeypatch, capsys):
    damage = next(d for m, d, _ in MEMBERS if m == member)
    for name in ("MLFLOW_TRACKING_URI", "LORAOPS_PROMOTION_TARGET", "PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LORAOPS_HOME", str(tmp_path / "home"))
    base = damaged(saved_base, tmp_path, damage)
    task = write_task(tmp_path, "sections", base, data_slice(tmp_path))
    assert main(["run", str(task)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("loraops: error: ") and str(base) in err, err
    assert not (tmp_path / "home" / "mlflow.db").exists()


def test_the_tokenizer_check_has_a_reason(saved_base, tmp_path):
    """Without its files, transformers builds a tokenizer of the special tokens alone: every word is unknown."""
    from transformers import AutoTokenizer

    base = damaged(saved_base, tmp_path, remove(*TOKENIZER))
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError):
        return  # this transformers refuses by itself
    words = [set(tokenizer(text)["input_ids"][1:-1]) for text in ("a walk in the park", "stock prices fell")]
    assert words[0] == words[1] and len(words[0]) == 1  # every word the same unknown token: no text tells apart


@pytest.fixture(scope="module")
def merge_pair(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("merge")
    model = build("llama")
    model.save_pretrained(root / "base", max_shard_size="20KB")
    inject(model, LoraConfig(r=4, alpha=8, target_modules=targets("llama")))
    randomize_b(model, std=0.2)
    save_adapter(model, root / "adapter")
    return root


def drop_first_shard(base: Path) -> None:
    sorted(base.glob("*.safetensors"))[0].unlink()


@pytest.mark.parametrize(
    "folder, damage, says",
    [
        ("adapter", write("adapter_model.safetensors", os.urandom(4096)), "does not fit the file"),
        ("adapter", write("adapter_model.safetensors", b"\x03" + bytes(7) + b"[1]"), "is list, not an object"),
        ("base", drop_first_shard, "which is not in"),
    ],
    ids=["adapter-garbage", "adapter-header-list", "base-index-missing-shard"],
)
def test_loraops_merge_is_one_line_exit_2_and_writes_nothing(folder, damage, says, merge_pair, tmp_path):
    copies = {name: Path(shutil.copytree(merge_pair / name, tmp_path / name)) for name in ("base", "adapter")}
    damage(copies[folder])
    done = subprocess.run(
        [LORAOPS, "merge", str(copies["base"]), str(copies["adapter"]), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LORAOPS_HOME": str(tmp_path / "home")},
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and says in done.stderr and str(copies[folder]) in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base"]  # no OUT_DIR, no partial folder
