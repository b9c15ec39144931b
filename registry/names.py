"""Names that become MLflow model names and storage prefixes, checked before any I/O."""

import re

from .errors import RegistryError

TASK_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
ALIASES = ("production", "previous-production", "candidate")
BASE_PREFIX = "base."  # task names hold no dot, so base model names never collide with tasks


def check_task_name(name: str) -> str:
    """A task is a slug: 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit."""
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise RegistryError(
            f"task name {name!r} is not a slug; use 1-63 lower-case letters, digits and '-' "
            f"(e.g. 'support-tickets'), starting and ending with a letter or digit"
        )
    return name


def check_task_prefix(prefix: str) -> str:
    """The start of task names: what a slug starts with (MLflow's LIKE filter then needs no escaping)."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", prefix):
        raise RegistryError(
            f"task prefix {prefix!r} cannot start a task name; use lower-case letters, digits and '-', "
            f"starting with a letter or digit (e.g. 'support-')"
        )
    return prefix


def check_filter_value(value: str, what: str) -> str:
    """A value MLflow's search filter can quote (an `=` comparison): not empty, no quotes, no backslash."""
    if not value or any(c in value for c in "'\"`\\"):
        raise RegistryError(f"{what} {value!r} cannot be searched for; give it without quotes or backslashes")
    return value


def base_model_name(name: str) -> str:
    """MLflow model name for a base model: 'sentence-transformers/all-MiniLM-L6-v2' -> 'base.sentence-transformers--all-minilm-l6-v2'."""
    slug = re.sub(r"[^a-z0-9.-]+", "-", name.lower().replace("/", "--")).strip("-.")
    if not slug:
        raise RegistryError(f"base model name {name!r} has no letters or digits; name it like 'org/model'")
    return BASE_PREFIX + slug[:200]


def parse_ref(ref: str | int | None) -> str | int:
    """'production', '@production' -> alias; 3, '3', ':3', 'v3' -> version number. None means production."""
    if ref is None:
        return "production"
    if isinstance(ref, int):
        return ref
    text = ref.lstrip("@:")
    if text.isdigit() or (text[:1] == "v" and text[1:].isdigit()):
        return int(text.lstrip("v"))
    if text not in ALIASES:
        raise RegistryError(
            f"{ref!r} is neither a version number nor an alias; use a number or one of {', '.join(ALIASES)}"
        )
    return text


def split_ref(text: str) -> tuple[str, str | None]:
    """'topics@production' -> ('topics', 'production'); 'topics:3' -> ('topics', '3'); 'topics' -> ('topics', None)."""
    for mark in "@:":
        if mark in text:
            task, ref = text.split(mark, 1)
            return check_task_name(task), ref
    return check_task_name(text), None
