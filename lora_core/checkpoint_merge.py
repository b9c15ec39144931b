"""Merge a PEFT-format adapter into a base checkpoint on disk, shard by shard: W = W0 + s·B·A.

Nothing is loaded as a model. For each base shard an output shard of the same name is written
tensor by tensor: untouched tensors are copied as bytes, each adapted weight is read, updated in
float32 (W0 [out, in] += s·B [out, r]·A [r, in], transposed for Conv1D) and written back in the
base dtype. Peak memory: the adapter, the weight being updated (with its float32 ΔW) and at most
WRITE_AHEAD weights waiting for the writer thread, whatever the model's size.
"""

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import AdapterMismatchError, MergeError, WeightFileError
from .layer import add_delta_, check_delta
from .model_files import open_regular, read_json_object
from .peft_format import (
    CONFIG_FILE,
    PICKLE_FILES,
    PREFIX,
    a_factor,
    factor_keys,
    is_factor,
    read_adapter_tensors,
    read_peft_config,
)
from .safetensors_io import DTYPE_NAMES, DTYPES, SafetensorsWriter, TensorEntry, read_header, read_tensor
from .scratch import scratch_dir

INDEX_FILE = "model.safetensors.index.json"
FIX = "re-save the model with save_pretrained or re-download it"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".ot", ".gguf")


@dataclass
class MergeReport:
    out_dir: str
    shards: list[str]
    merged: list[str] = field(default_factory=list)  # weights W0 + s·B·A
    replaced: list[str] = field(default_factory=list)  # modules_to_save tensors written over the base's
    added: list[str] = field(default_factory=list)  # modules_to_save tensors the base lacks (e.g. a new head)
    prefix: str = ""  # prepended to the base's tensor names (a bare base under a task model's wrapper)
    bytes: int = 0


@dataclass(frozen=True)
class _Update:
    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scaling: float
    fan_in_fan_out: bool  # the base stores W as [in, out] (Conv1D, an embedding)


def base_shards(base_dir: Path) -> list[Path]:
    """The base's safetensors files, in the order its index names them (or sorted); an index must name shards that
    are files of the folder."""
    index = base_dir / INDEX_FILE
    if os.path.lexists(index):
        return [base_dir / name for name in indexed_shards(index)]
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        pickles = (
            [p.name for p in base_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth")] if base_dir.is_dir() else []
        )
        hint = (
            f" (found {pickles[0]}: pickle weights are not read, re-save with safe_serialization=True)"
            if pickles
            else ""
        )
        raise WeightFileError(
            f"{base_dir}: no *.safetensors weights{hint}; point at a model folder saved by save_pretrained"
        )
    return files


def indexed_shards(index: Path) -> list[str]:
    """The shard file names model.safetensors.index.json maps tensors to, in order; each one present beside it."""
    weight_map = read_json_object(index, FIX).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise WeightFileError(f"{index}: weight_map is not a map of tensor names to shard files; {FIX}")
    names = list(dict.fromkeys(weight_map.values()))
    for name in names:
        if name in ("", ".", "..") or Path(name).name != name:
            raise WeightFileError(f"{index}: shard {name[:80]!r} is not a file name in the model folder; {FIX}")
        if not os.path.lexists(index.parent / name):
            raise WeightFileError(
                f"{index} names shard {name!r}, which is not in {index.parent}; download the missing shard or {FIX}"
            )
    return names


def _updates(adapter_dir: Path) -> tuple[dict[str, _Update], dict[str, torch.Tensor]]:
    """({module path: update}, {tensor name in the task model: saved-module tensor})."""
    peft = read_peft_config(adapter_dir)
    config = peft.lora_config(adapter_dir / CONFIG_FILE)
    tensors = read_adapter_tensors(adapter_dir)
    updates, saved = {}, {}
    for key, value in tensors.items():
        if factor := a_factor(key):
            path, embedding = factor
            b = tensors.get(factor_keys(path, embedding)[1])
            if b is None or b.shape[1] != value.shape[0] or value.shape[0] != config.rank_for(path):
                raise AdapterMismatchError(
                    f"{adapter_dir}: {path} has lora_A {tuple(value.shape)} and lora_B "
                    f"{None if b is None else tuple(b.shape)}, not rank {config.rank_for(path)}; "
                    "the adapter is damaged, re-save it"
                )
            transposed = embedding or peft.fan_in_fan_out
            updates[path] = _Update(value.float(), b.float(), config.scaling_for(path), transposed)
        elif not is_factor(key):
            saved[key.removeprefix(PREFIX)] = value
    if not updates:
        raise AdapterMismatchError(f"{adapter_dir}: no lora_A/lora_B weights; not a LoRA adapter")
    return updates, saved


def _prefix(paths: list[str], names: set[str]) -> str:
    """'' when the adapter's module paths name base tensors directly; else the wrapper prefix (e.g. 'bert.')
    that a task model adds over a bare base checkpoint, when stripping it makes every path fit."""
    if all(f"{p}.weight" in names for p in paths):
        return ""
    heads = {p.split(".", 1)[0] for p in paths}
    if len(heads) == 1 and all("." in p and f"{p.split('.', 1)[1]}.weight" in names for p in paths):
        return heads.pop() + "."
    missing = sorted(p for p in paths if f"{p}.weight" not in names)
    raise AdapterMismatchError(
        f"the base has no weight for adapted module(s) {', '.join(missing[:4])}"
        f"{' and more' if len(missing) > 4 else ''}; merge onto the base the adapter was trained on"
    )


def _check_shape(path: str, entry: TensorEntry, update: _Update) -> None:
    expected = (update.b.shape[0], update.a.shape[1])
    expected = expected[::-1] if update.fan_in_fan_out else expected
    if entry.shape != expected:
        raise AdapterMismatchError(
            f"{path}: base weight is {list(entry.shape)} but the adapter makes {list(expected)}; "
            "merge onto the base the adapter was trained on"
        )
    if not entry.dtype.startswith(("F", "BF")):
        raise AdapterMismatchError(f"{path}: base weight is {entry.dtype}; a LoRA update needs a floating-point weight")


def merge_checkpoint(
    base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, config_updates: dict[str, Any] | None = None
) -> MergeReport:
    """Write base + adapter as a plain model in `out_dir`: shards named and split like the base, same dtype,
    config (with `config_updates`), tokenizer and other small files copied. Every check runs before a byte is written.

    modules_to_save tensors (e.g. a classifier head) replace the base's, whatever their shape: give the
    task's labels in `config_updates` when the head is new.
    """
    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    if not os.path.lexists(base_dir / "config.json"):
        raise WeightFileError(f"{base_dir}: no config.json; point at a model folder saved by save_pretrained")
    config = read_json_object(base_dir / "config.json", FIX)
    updates, saved = _updates(adapter_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise MergeError(f"{out_dir} exists and is not empty; pick a new output folder or remove it")
    shards = {path: read_header(path) for path in base_shards(base_dir)}
    located = {name: (path, entry) for path, (entries, _) in shards.items() for name, entry in entries.items()}
    prefix = _prefix(list(updates), set(located))
    report = MergeReport(out_dir=str(out_dir), shards=[p.name for p in shards], prefix=prefix)
    for path, update in updates.items():
        entry = located[f"{path.removeprefix(prefix)}.weight"][1]
        _check_shape(path, entry, update)
        check_delta(update.a, update.b, update.scaling, DTYPES[entry.dtype], path)
    for name in saved:  # a saved module is the adapter's own copy: it replaces the base's, whatever its shape
        in_base = name.startswith(prefix) and name.removeprefix(prefix) in located
        (report.replaced if in_base else report.added).append(name)
    # Written beside the destination and renamed into place: a crash never leaves a half-merged model under out_dir.
    tmp = scratch_dir(out_dir.parent, f".{out_dir.name}.partial-")  # and what a killed merge left is removed
    try:
        weight_map: dict[str, str] = {}
        last = list(shards)[-1]
        for shard, (entries, metadata) in shards.items():
            extra = report.added if shard == last else []
            _write_shard(shard, tmp / shard.name, entries, metadata, prefix, updates, saved, extra, report)
            weight_map |= {prefix + n: shard.name for n in entries} | {n: shard.name for n in extra}
        _copy_side_files(base_dir, tmp, config | config_updates if config_updates else None)
        if os.path.lexists(base_dir / INDEX_FILE):
            index = read_json_object(base_dir / INDEX_FILE, FIX)
            index["weight_map"] = dict(sorted(weight_map.items()))
            index.setdefault("metadata", {})["total_size"] = report.bytes
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _write_shard(
    source: Path,
    dest: Path,
    entries: dict[str, TensorEntry],
    metadata: dict[str, str],
    prefix: str,
    updates: dict[str, _Update],
    saved: dict[str, torch.Tensor],
    extra: list[str],
    report: MergeReport,
) -> None:
    ordered = sorted(entries.values(), key=lambda e: e.start)  # read the base front to back
    layout = [
        (prefix + e.name, e.dtype, tuple(saved[prefix + e.name].shape) if prefix + e.name in saved else e.shape)
        for e in ordered
    ]
    layout += [(n, DTYPE_NAMES[saved[n].dtype], tuple(saved[n].shape)) for n in extra]
    with open_regular(source) as f, SafetensorsWriter(dest, layout, metadata or {"format": "pt"}) as out:
        for entry in ordered:
            name = prefix + entry.name
            module = name.removesuffix(".weight")
            if name.endswith(".weight") and module in updates:
                w = read_tensor(f, entry)
                u = updates[module]
                out.write(name, add_delta_(w, u.a, u.b, u.scaling, u.fan_in_fan_out, module))
                report.merged.append(name)
            elif name in saved:
                out.write(name, saved[name].to(DTYPES[entry.dtype]))
            else:
                out.copy(name, f, entry)
        for name in extra:
            out.write(name, saved[name])
    report.bytes += sum(math.prod(shape) * DTYPES[dtype].itemsize for _, dtype, shape in layout)


def _copy_side_files(base_dir: Path, out_dir: Path, config: dict[str, Any] | None) -> None:
    """Tokenizer and generation files, config.json (as `config` when given): every top-level file that is not
    weights."""
    for path in base_dir.iterdir():
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES) and path.name not in (INDEX_FILE, *PICKLE_FILES):
            shutil.copyfile(path, out_dir / path.name)
    if config:
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
