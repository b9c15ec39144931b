"""Malformed safetensors headers and JSON files, by family: each family builds several members in tmp and every
member is refused with one line naming the file and what is wrong (a ModelFileError, exit 2 at the CLI), never a
RecursionError, a KeyError or a hang. The next member of a family is caught by the same check."""

import json
import os
import signal
import socket
import struct

import pytest
import torch
from conftest import build, randomize_b, targets

from lora_core import LoraConfig, inject, save_adapter
from lora_core.checkpoint_merge import INDEX_FILE, merge_checkpoint
from lora_core.errors import LoraError, ModelFileError, WeightFileError
from lora_core.model_files import MAX_JSON_DEPTH, ModelConfig, read_json_object, read_model_config
from lora_core.peft_format import read_adapter_config, read_adapter_tensors
from lora_core.safetensors_io import read_header, read_tensors

GOOD = {
    "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    "b": {"dtype": "I8", "shape": [4], "data_offsets": [16, 20]},
    "__metadata__": {"format": "pt"},
}
DATA_BYTES = 20


def safetensors_bytes(header: object, data: bytes = bytes(DATA_BYTES), length: int | None = None) -> bytes:
    """A safetensors file: the header (JSON-encoded unless already bytes), its length (or a false one), the data."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def with_entry(name: str, **fields) -> dict:
    header = json.loads(json.dumps(GOOD))
    header[name] |= fields
    return header


def deep_list(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.fixture
def no_hang():
    """Fail (not hang) if the code under test blocks: an open() of a FIFO with no writer would wait forever."""

    def timeout(*_):
        raise TimeoutError("blocked for 10 s")

    previous = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def refused(error: pytest.ExceptionInfo, path, says: str) -> None:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    assert says in message, message


def test_the_well_formed_member_reads_back(tmp_path):
    path = tmp_path / "good.safetensors"
    path.write_bytes(safetensors_bytes(GOOD))
    entries, metadata = read_header(path)
    assert metadata == {"format": "pt"} and entries["a"].shape == (2, 2) and entries["b"].nbytes == 4
    assert read_tensors(path)["a"].shape == (2, 2)


LENGTH = [
    ("past-the-end", lambda: safetensors_bytes(GOOD, length=10**6), "does not fit the file"),
    ("largest-u64", lambda: safetensors_bytes(GOOD, length=2**64 - 1), "does not fit the file"),
    ("zero", lambda: safetensors_bytes(b"", data=b""), "not valid JSON"),
    ("shorter-than-length-field", lambda: b"\x05\x00\x00", "too short"),
    ("empty-file", lambda: b"", "too short"),
    ("cuts-the-json", lambda: safetensors_bytes(GOOD, length=10), "not valid JSON"),
]
TOP_LEVEL = [
    ("list", lambda: safetensors_bytes([1, 2], b""), "is list, not an object"),
    ("number", lambda: safetensors_bytes(3, b""), "is int, not an object"),
    ("text", lambda: safetensors_bytes("F32", b""), "is str, not an object"),
    ("null", lambda: safetensors_bytes(None, b""), "is NoneType, not an object"),
    ("not-utf8", lambda: safetensors_bytes(b"\xff\xfe{}", b""), "not UTF-8"),
    ("not-json", lambda: safetensors_bytes(b"{dtype: F32}", b""), "not valid JSON"),
]
NESTING = [
    ("list-100000-deep", lambda: safetensors_bytes(deep_list(100_000), b""), "nested too deeply"),
    ("object-100000-deep", lambda: safetensors_bytes(b'{"a":' * 100_000 + b"1" + b"}" * 100_000, b""), "nested"),
    ("metadata-100-deep", lambda: safetensors_bytes(b'{"__metadata__":' + deep_list(100) + b"}", b""), "deeper"),
    ("shape-100-deep", lambda: safetensors_bytes(with_entry("a", shape=json.loads(deep_list(100)))), "deeper"),
]
DTYPE = [
    ("number", lambda: safetensors_bytes(with_entry("a", dtype=3)), "dtype is not text"),
    ("null", lambda: safetensors_bytes(with_entry("a", dtype=None)), "dtype is not text"),
    ("list", lambda: safetensors_bytes(with_entry("a", dtype=["F32"])), "dtype is not text"),
    ("unknown", lambda: safetensors_bytes(with_entry("a", dtype="F128")), "dtype 'F128' is not one of"),
    ("lower-case", lambda: safetensors_bytes(with_entry("a", dtype="f32")), "dtype 'f32' is not one of"),
    ("empty", lambda: safetensors_bytes(with_entry("a", dtype="")), "dtype '' is not one of"),
]
SHAPE = [
    ("text", lambda: safetensors_bytes(with_entry("a", shape="2,2")), "not a list of non-negative integers"),
    ("negative", lambda: safetensors_bytes(with_entry("a", shape=[-2, -2])), "not a list of non-negative integers"),
    ("float", lambda: safetensors_bytes(with_entry("a", shape=[2.0, 2])), "not a list of non-negative integers"),
    ("bool", lambda: safetensors_bytes(with_entry("a", shape=[True, 4])), "not a list of non-negative integers"),
    ("nested", lambda: safetensors_bytes(with_entry("a", shape=[[2], [2]])), "not a list of non-negative integers"),
    ("null", lambda: safetensors_bytes(with_entry("a", shape=None)), "not a list of non-negative integers"),
    ("wrong-size", lambda: safetensors_bytes(with_entry("a", shape=[3, 2])), "does not match its 16 bytes"),
    ("huge", lambda: safetensors_bytes(with_entry("a", shape=[2**70, 2**70])), "does not match its 16 bytes"),
]
OFFSETS = [
    ("one-number", lambda: safetensors_bytes(with_entry("a", data_offsets=[0])), "is not [begin, end]"),
    ("three-numbers", lambda: safetensors_bytes(with_entry("a", data_offsets=[0, 8, 16])), "is not [begin, end]"),
    ("text", lambda: safetensors_bytes(with_entry("a", data_offsets=["0", "16"])), "is not [begin, end]"),
    ("negative", lambda: safetensors_bytes(with_entry("a", data_offsets=[-16, 0])), "is not [begin, end]"),
    ("reversed", lambda: safetensors_bytes(with_entry("a", data_offsets=[16, 0])), "fall outside"),
    ("past-the-end", lambda: safetensors_bytes(with_entry("b", data_offsets=[16, 10**9])), "fall outside"),
    ("beyond-u64", lambda: safetensors_bytes(with_entry("b", data_offsets=[2**70, 2**70 + 4])), "fall outside"),
    ("overlapping", lambda: safetensors_bytes(with_entry("b", data_offsets=[12, 16])), "overlaps the data before"),
    ("short-file", lambda: safetensors_bytes(GOOD, data=bytes(DATA_BYTES - 1)), "fall outside"),
    ("padded-file", lambda: safetensors_bytes(GOOD, data=bytes(DATA_BYTES + 8)), "the header describes"),
]
ENTRY_AND_METADATA = [
    ("entry-list", lambda: safetensors_bytes({"a": [1, 2]}, b""), "the entry is list, not an object"),
    ("entry-missing-fields", lambda: safetensors_bytes({"a": {}}, b""), "dtype is not text"),
    ("metadata-list", lambda: safetensors_bytes({"__metadata__": ["format", "pt"]}, b""), "__metadata__ is not"),
    ("metadata-number-value", lambda: safetensors_bytes({"__metadata__": {"format": 1}}, b""), "__metadata__ is not"),
    ("metadata-object-value", lambda: safetensors_bytes({"__metadata__": {"a": {}}}, b""), "__metadata__ is not"),
]
HEADER_FAMILIES = {
    "length": LENGTH,
    "top-level": TOP_LEVEL,
    "nesting": NESTING,
    "dtype": DTYPE,
    "shape": SHAPE,
    "offsets": OFFSETS,
    "entry-metadata": ENTRY_AND_METADATA,
}
HEADER_MEMBERS = [(f"{family}/{name}", make, says) for family, ms in HEADER_FAMILIES.items() for name, make, says in ms]


@pytest.mark.parametrize("member, make, says", HEADER_MEMBERS, ids=[m[0] for m in HEADER_MEMBERS])
def test_every_malformed_header_is_one_line_naming_the_file(member, make, says, tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(make())
    with pytest.raises(WeightFileError) as error:
        read_header(path)
    refused(error, path, says)


def test_each_header_family_has_several_members():
    assert all(len(members) >= 4 for members in HEADER_FAMILIES.values())


def fifo(path):
    os.mkfifo(path)


def directory(path):
    path.mkdir()


def symlink_loop(path):
    path.symlink_to(path)


def unix_socket(path):
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


def dangling_symlink(path):
    path.symlink_to(path.parent / "gone")


NOT_REGULAR = [
    (fifo, "is a FIFO (named pipe), not a regular file"),
    (directory, "is a directory, not a regular file"),
    (symlink_loop, "cannot open (Too many levels of symbolic links)"),
    (unix_socket, "cannot open"),  # opening a socket file fails with ENXIO before fstat can look
    (dangling_symlink, "does not exist"),
]
READERS = {
    "model.safetensors": read_header,
    "config.json": read_json_object,
    "adapter_config.json": read_json_object,
}


@pytest.mark.parametrize("name", list(READERS))
@pytest.mark.parametrize("make, says", NOT_REGULAR, ids=[m[0].__name__ for m in NOT_REGULAR])
def test_only_regular_files_are_opened_and_a_fifo_never_blocks(name, make, says, tmp_path, no_hang):
    path = tmp_path / name
    make(path)
    with pytest.raises(ModelFileError) as error:
        READERS[name](path)
    refused(error, path, says)


JSON_FILES = [
    ("not-json", b"{not json", "not valid JSON"),
    ("empty", b"", "not valid JSON"),
    ("list", b"[1, 2]", "the JSON is list, not an object"),
    ("number", b"3", "the JSON is int, not an object"),
    ("text", b'"bert"', "the JSON is str, not an object"),
    ("null", b"null", "the JSON is NoneType, not an object"),
    ("latin-1", '{"model_type": "caf\xe9"}'.encode("latin-1"), "not UTF-8"),
    ("100000-deep", b'{"a":' + deep_list(100_000) + b"}", "nested too deeply"),
    (f"{MAX_JSON_DEPTH + 1}-deep", b'{"a":' + deep_list(MAX_JSON_DEPTH) + b"}", "deeper than"),
]


@pytest.mark.parametrize("member, content, says", JSON_FILES, ids=[m[0] for m in JSON_FILES])
def test_every_json_file_must_be_an_object_within_bounds(member, content, says, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(ModelFileError) as error:
        read_json_object(path)
    refused(error, path, says)


def test_nesting_up_to_the_bound_is_read(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"a":' + deep_list(MAX_JSON_DEPTH - 1) + b"}")
    assert "a" in read_json_object(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A sharded tiny Llama base and a PEFT adapter for it, written once; tests copy what they damage."""
    root = tmp_path_factory.mktemp("merge")
    model = build("llama")
    model.save_pretrained(root / "base", max_shard_size="20KB")
    inject(model, LoraConfig(r=4, alpha=8, target_modules=targets("llama")))
    randomize_b(model, std=0.2)
    save_adapter(model, root / "adapter")
    return root


def copy_of(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / folder.name)


def damage_index(base, weight_map):
    index = json.loads((base / INDEX_FILE).read_text())
    index["weight_map"] = weight_map(index["weight_map"])
    (base / INDEX_FILE).write_text(json.dumps(index))


def first_shard_missing(base):
    shard = sorted(base.glob("*.safetensors"))[0]
    shard.unlink()
    return shard


def first_shard_a_fifo(base):
    os.mkfifo(first_shard_missing(base))


INDEX = [
    ("shard-missing", first_shard_missing, "which is not in"),
    ("names-other-shard", lambda b: damage_index(b, lambda m: m | {"x.weight": "model-9-of-9.safetensors"}), "not in"),
    ("outside-the-folder", lambda b: damage_index(b, lambda m: m | {"x.weight": "../model.safetensors"}), "not a file"),
    ("sub-folder", lambda b: damage_index(b, lambda m: m | {"x.weight": "a/model.safetensors"}), "not a file name"),
    ("weight-map-list", lambda b: damage_index(b, lambda m: list(m)), "weight_map is not a map"),
    ("weight-map-empty", lambda b: damage_index(b, lambda m: {}), "weight_map is not a map"),
    ("shard-not-text", lambda b: damage_index(b, lambda m: m | {"x.weight": 3}), "weight_map is not a map"),
    ("index-list", lambda b: (b / INDEX_FILE).write_text("[]"), "the JSON is list"),
    ("config-list", lambda b: (b / "config.json").write_text("[]"), "the JSON is list"),
    ("config-fifo", lambda b: ((b / "config.json").unlink(), os.mkfifo(b / "config.json")), "is a FIFO"),
    ("shard-fifo", first_shard_a_fifo, "is a FIFO"),
]
ADAPTER = [
    ("weights-garbage", lambda a: (a / "adapter_model.safetensors").write_bytes(os.urandom(4096)), "does not fit"),
    ("weights-header-list", lambda a: (a / "adapter_model.safetensors").write_bytes(safetensors_bytes([])), "is list"),
    (
        "weights-deep",
        lambda a: (a / "adapter_model.safetensors").write_bytes(safetensors_bytes(deep_list(10**5))),
        "deep",
    ),
    (
        "weights-dtype",
        lambda a: (a / "adapter_model.safetensors").write_bytes(safetensors_bytes(with_entry("a", dtype=1))),
        "dtype",
    ),
    ("config-list", lambda a: (a / "adapter_config.json").write_text("[]"), "the JSON is list"),
    ("config-deep", lambda a: (a / "adapter_config.json").write_bytes(deep_list(10**5)), "nested too deeply"),
    (
        "config-directory",
        lambda a: ((a / "adapter_config.json").unlink(), (a / "adapter_config.json").mkdir()),
        "directory",
    ),
]


def nothing_written(tmp_path) -> bool:
    return not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


@pytest.mark.parametrize("member, damage, says", INDEX, ids=[m[0] for m in INDEX])
def test_a_damaged_base_is_refused_before_the_merge_writes(member, damage, says, folders, tmp_path, no_hang):
    base = copy_of(folders / "base", tmp_path)
    damage(base)
    with pytest.raises(ModelFileError, match=says) as error:
        merge_checkpoint(base, folders / "adapter", tmp_path / "out")
    assert "\n" not in str(error.value) and str(base) in str(error.value)
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("member, damage, says", ADAPTER, ids=[m[0] for m in ADAPTER])
def test_a_damaged_adapter_is_refused_before_the_merge_writes(member, damage, says, folders, tmp_path):
    adapter = copy_of(folders / "adapter", tmp_path)
    damage(adapter)
    with pytest.raises(LoraError, match=says) as error:
        merge_checkpoint(folders / "base", adapter, tmp_path / "out")
    assert "\n" not in str(error.value) and str(adapter) in str(error.value)
    assert nothing_written(tmp_path)


def test_adapter_tensors_are_read_through_the_checked_header(folders):
    tensors = read_adapter_tensors(folders / "adapter")
    assert read_adapter_config(folders / "adapter").r == 4
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())
    merge_checkpoint(folders / "base", folders / "adapter", folders / "out")  # the undamaged pair still merges
    assert (folders / "out" / INDEX_FILE).is_file()


def test_a_model_config_reads_the_keys_loraops_uses_and_takes_odd_values_as_absent(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"_name_or_path": "org/base", "model_type": "llama", "n_positions": 2048, "hidden_size": 64})
    )
    config = read_model_config(tmp_path)
    assert (config.name_or_path, config.model_type, config.positions) == ("org/base", "llama", 2048)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": 3, "max_position_embeddings": True}))
    assert read_model_config(tmp_path) == ModelConfig()  # transformers refuses these with its own message
    assert read_model_config(tmp_path / "absent") == ModelConfig()
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(ModelFileError, match=r"config.json: the JSON is list, not an object; re-save the model"):
        read_model_config(tmp_path)
