"""Which task files one `loraops run` means: a folder stands for its task files, and each task is named once."""

from collections.abc import Sequence
from pathlib import Path

from .errors import SpecError
from .spec import TaskSpec, resolved

TASK_SUFFIXES = (".yaml", ".yml")


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
