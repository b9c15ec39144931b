"""The files of a model or adapter folder, opened defensively: the one place lora_core opens them.

Only regular files are opened, and opening never blocks: the file is opened non-blocking and checked with fstat
before a byte is read, so a FIFO with no writer, a directory, a socket or a symlink loop is one line, not a hang or a
traceback. JSON files (config.json, adapter_config.json, model.safetensors.index.json, manifest.json) and
safetensors headers are parsed within bounds on size and nesting depth and must be a JSON object at the top.
"""

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import ModelFileError

MAX_JSON_BYTES = 64 * 1024 * 1024  # a 1000-shard index is under 1 MiB; a config is a few KiB
MAX_JSON_DEPTH = 64  # Hugging Face configs nest a handful of levels; past this the file is damaged or hostile
KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def file_kind(mode: int) -> str:
    """What a file of this st_mode is, in words: 'a regular file', 'a directory', 'a FIFO (named pipe)', ..."""
    return "a regular file" if stat.S_ISREG(mode) else KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(path: str | Path) -> BinaryIO:
    """`path` open for binary reading if it is a regular file (after following symlinks); else ModelFileError.

    O_NONBLOCK makes opening a FIFO return at once (a blocking open waits for a writer forever); fstat on the open
    descriptor then sees what was opened, with no window between the check and the open.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ModelFileError(f"{path} does not exist; check the path or re-download the model") from None
    except OSError as e:  # a symlink loop (ELOOP), no permission, a name too long
        raise ModelFileError(f"{path}: cannot open ({e.strerror}); fix the path or its permissions") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise ModelFileError(f"{path} is {file_kind(mode)}, not a regular file; replace it with the file itself")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def json_too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when lists and objects in `value` nest more than `limit` levels (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def parse_json_object(raw: bytes, where: str | Path, fix: str = "re-save or re-download it") -> dict[str, Any]:
    """The JSON object in `raw` (the bytes of `where`): valid UTF-8 JSON, an object at the top, nested at most
    MAX_JSON_DEPTH levels; else ModelFileError naming `where`, what is wrong and `fix`."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelFileError(f"{where}: not UTF-8 text, so not JSON; {fix}") from None
    except RecursionError:  # the decoder recurses once per level: deep enough nesting ends the stack
        raise ModelFileError(f"{where}: JSON nested too deeply to read; {fix}") from None
    except ValueError as e:
        raise ModelFileError(f"{where}: not valid JSON ({e}); {fix}") from None
    if not isinstance(value, dict):
        raise ModelFileError(f"{where}: the JSON is {type(value).__name__}, not an object; {fix}")
    if json_too_deep(value):
        raise ModelFileError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels; {fix}")
    return value


def read_json_object(path: str | Path, fix: str = "re-save or re-download it") -> dict[str, Any]:
    """The JSON object in the regular file `path`, at most MAX_JSON_BYTES long (see parse_json_object)."""
    with open_regular(path) as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ModelFileError(f"{path}: over {MAX_JSON_BYTES // 2**20} MiB, too large for a JSON settings file; {fix}")
    return parse_json_object(raw, path, fix)


class ModelConfig(BaseModel):
    """A model folder's config.json: the keys loraops reads (a value not of its kind reads as absent, as
    transformers would fail on it with its own message)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)
    model_type: str | None = None
    name_or_path: str | None = Field(None, alias="_name_or_path")
    max_position_embeddings: int | None = None
    n_positions: int | None = None  # GPT-2's name for the same

    @field_validator("model_type", "name_or_path", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str | None:
        return value if isinstance(value, str) and value else None

    @field_validator("max_position_embeddings", "n_positions", mode="before")
    @classmethod
    def _count(cls, value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def positions(self) -> int | None:
        """How many token positions the model has, when its config says."""
        return self.max_position_embeddings or self.n_positions


def read_model_config(folder: str | Path, fix: str = "re-save the model with save_pretrained") -> ModelConfig:
    """config.json of a model folder (read_json_object's rules); ModelConfig() when the folder has none."""
    path = Path(folder) / "config.json"
    return ModelConfig.model_validate(read_json_object(path, fix)) if os.path.lexists(path) else ModelConfig()
