"""Task files: one read and checked (once per process while it is unchanged), the same task as a search trains it,
and which files one `loraops run` means (a folder stands for its task files; each task is named once)."""

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .errors import SpecError
from .input_files import read_regular, regular_file
from .spec import SearchSpec, TaskSpec, resolved
from .strict_yaml import load_yaml

TASK_SUFFIXES = (".yaml", ".yml")


def load_spec(path: str | Path) -> TaskSpec:
    """The task file at `path`, validated; parsed once per process while the file is unchanged."""
    path = regular_file(path, "task file", "give the task's YAML file").resolve()  # links followed: no loop
    stat = path.stat()
    return _parse_spec(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _parse_spec(path: Path, mtime_ns: int, size: int) -> TaskSpec:
    try:
        text = read_regular(path, "task file", "give the task's YAML file").decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 (byte {e.start}); save the task file as UTF-8") from None
    raw = load_yaml(text, path)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a task file is a YAML mapping with at least task, type and data")
    try:
        return TaskSpec.model_validate({**raw, "source": path.resolve()})
    except ValidationError as e:
        raise spec_error(str(path), e) from None


def searched(spec: TaskSpec, search: SearchSpec | dict[str, Any], where: str) -> TaskSpec:
    """The task as a search trains it: `search` as its training.search, the task checked again with it (so a search
    refuses what the file would; `where` names the file and what was added), with the validation split the trials
    are scored on when the file leaves data.validation_fraction unset."""
    raw = spec.model_dump(mode="json", exclude_unset=True)  # as written: validators see the same fields set
    raw.setdefault("training", {})["search"] = search if isinstance(search, dict) else search.model_dump(mode="json")
    try:
        return TaskSpec.model_validate({**raw, "source": spec.source})
    except ValidationError as e:
        raise spec_error(where, e) from None


def spec_error(where: str, error: ValidationError) -> SpecError:
    """One line for the first problem pydantic found: `where`, the field's path, the cause and the fix."""
    first = error.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        message = "required field is missing; add it"
    elif first["type"] == "extra_forbidden":
        message = "unknown field; remove it or check the spelling"
    elif first["type"] == "finite_number":
        message = f"{first['input']} is not a finite number; give a number (NaN and infinity are refused)"
    return SpecError(f"{where}: {field}: {message}")


def expand_task_paths(arguments: Sequence[str | Path]) -> list[Path]:
    """Each argument as an absolute path, a folder replaced by its *.yaml / *.yml files in name order (not its
    subfolders, nor hidden files). A file named twice (itself and through its folder) counts once. A folder with no
    task file is bad input; a missing file is left to load_spec, which names it."""
    found: list[Path] = []
    for argument in arguments:
        path = resolved(Path(argument).expanduser())
        if path.is_dir():
            files = sorted(
                p for p in path.iterdir() if p.suffix in TASK_SUFFIXES and p.is_file() and not p.name.startswith(".")
            )
            if not files:
                raise SpecError(f"{argument}: a folder with no *.yaml task file; give task files or a folder of them")
            found += files
        else:
            found.append(path)
    return list(dict.fromkeys(found))


def check_unique_tasks(specs: Sequence[TaskSpec]) -> None:
    """Two task files of one call naming the same task would race for its versions and aliases: refuse them."""
    seen: dict[str, Path | None] = {}
    for spec in specs:
        if spec.task in seen:
            raise SpecError(
                f"{seen[spec.task]} and {spec.source} both name task {spec.task!r}; give each task file its own "
                f"task name, or run them one after the other"
            )
        seen[spec.task] = spec.source
