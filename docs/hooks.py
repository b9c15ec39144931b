"""MkDocs hook: the pages that must not drift from the code are generated from it at build time.

A page holds a marker; the build replaces it:
- `<!-- task-reference -->`: every section and field of `pipelines.spec.TaskSpec` (type, default,
  constraints, description), read from the pydantic models;
- `<!-- cli-help -->`: the `loraops` command's own help, the top parser and each subcommand;
- `<!-- module-list -->`: every module of the packages with the first paragraph of its docstring (read, not imported).

The renderers are plain functions (`task_reference`, `cli_help`, `module_list`) so tests can call them.
"""

import argparse
import ast
import inspect
import os
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

TASK_REFERENCE = "<!-- task-reference -->"
CLI_HELP = "<!-- cli-help -->"
MODULE_LIST = "<!-- module-list -->"
ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("lora_core", "registry", "pipelines")
HELP_COLUMNS = "100"  # argparse wraps help to $COLUMNS: fixed, so the page does not depend on the terminal


def on_page_markdown(markdown: str, **_) -> str:
    if TASK_REFERENCE in markdown:
        markdown = markdown.replace(TASK_REFERENCE, task_reference())
    if CLI_HELP in markdown:
        markdown = markdown.replace(CLI_HELP, cli_help())
    if MODULE_LIST in markdown:
        markdown = markdown.replace(MODULE_LIST, module_list())
    return markdown


# --- the task-file reference -------------------------------------------------------------------


def task_reference() -> str:
    """Markdown: the whole task file at its defaults, then one table per section, from pipelines.spec."""
    from pipelines.spec import TaskSpec

    parts = ["## The whole file at its defaults", "", "```yaml", *defaults_yaml(TaskSpec), "```", ""]
    for path, model in sections(TaskSpec):
        parts += [f"## {path or 'top level'}", "", *_docstrings(model)]
        parts += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in task_fields(model):
            if _model(field.annotation) is not None:
                anchor = _anchor(f"{path}.{name}" if path else name)
                kind, default = f"[section](#{anchor})", f"[below](#{anchor})"
            else:
                kind, default = f"`{_type_text(field.annotation)}`", _default(field)
            parts.append(f"| `{name}` | {kind} | {default} | {_cell(field.description or '')}{_constraints(field)} |")
        parts.append("")
    return "\n".join(parts)


def task_fields(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    """A model's fields as a task file has them (fields excluded from dumps, such as `source`, are not)."""
    for name, field in model.model_fields.items():
        if not field.exclude:
            yield name, field


def sections(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """(dotted path, model) for the top level ("") and every nested model, depth first, in field order."""
    yield path, model
    for name, field in task_fields(model):
        nested = _model(field.annotation)
        if nested is not None:
            yield from sections(nested, f"{path}.{name}" if path else name)


def defaults_yaml(model: type[BaseModel], indent: str = "") -> list[str]:
    """YAML lines: every field at its default; required fields are left empty with a comment."""
    lines = []
    for name, field in task_fields(model):
        nested = _model(field.annotation)
        if nested is not None:
            lines += [f"{indent}{name}:", *defaults_yaml(nested, indent + "  ")]
        elif field.is_required():
            lines.append(f"{indent}{name}:  # required")
        else:
            lines.append(f"{indent}{name}: {_yaml(default_value(field))}")
    return lines


def default_value(field: FieldInfo):
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return None if field.default is PydanticUndefined else field.default


def _model(annotation) -> type[BaseModel] | None:
    return annotation if inspect.isclass(annotation) and issubclass(annotation, BaseModel) else None


def _docstrings(model: type[BaseModel]) -> list[str]:
    """The model's own docstring and those of the project's classes it extends (lora_core.LoraConfig)."""
    docs = []
    for cls in model.__mro__:
        doc = cls.__dict__.get("__doc__")
        if doc and cls.__module__.split(".")[0] in ("pipelines", "lora_core", "registry"):
            docs += [f"*{cls.__module__}.{cls.__qualname__}*:", "", inspect.cleandoc(doc), ""]
    return docs


def _anchor(heading: str) -> str:
    """The id Python-Markdown's toc gives a heading (its slugify, for ASCII): lower case, dots dropped."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


def _type_text(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is list:
        return f"list[{_type_text(args[0])}]"
    if origin is dict:
        return f"map[{_type_text(args[0])}, {_type_text(args[1])}]"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    return f"`{_yaml(default_value(field))}`"


def _yaml(value) -> str:
    """One value as it is written in a task file (flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("\n...").strip()


def _constraints(field: FieldInfo) -> str:
    signs = {Gt: ("gt", ">"), Ge: ("ge", "≥"), Lt: ("lt", "<"), Le: ("le", "≤")}
    found = [
        f"{sign} {getattr(m, attr)}"
        for m in field.metadata
        for kind, (attr, sign) in signs.items()
        if isinstance(m, kind)
    ]
    return f" ({', '.join(found)})" if found else ""


def _cell(text: str) -> str:
    """Text safe in a markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


# --- the commands page ------------------------------------------------------------------------


def cli_help() -> str:
    """Markdown: `loraops --help`, then each subcommand's help, as argparse prints them."""
    from pipelines.cli.main import build_parser

    parser = build_parser()
    parts = [f"## {parser.prog}", "", *_help_block(parser)]
    for _, summary, sub in subcommands(parser):
        parts += [f"## {sub.prog}", "", f"{summary}" if summary else "", "", *_help_block(sub)]
    return "\n".join(parts)


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the order the CLI declares them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, summaries.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def _help_block(parser: argparse.ArgumentParser) -> list[str]:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        text = parser.format_help()
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return ["```text", text.rstrip(), "```", ""]


# --- the module list --------------------------------------------------------------------------


def module_list(root: Path = ROOT) -> str:
    """Markdown: per package, each module (and sub-package) with the first paragraph of its docstring."""
    parts = []
    for package in PACKAGES:
        parts += [f"### `{package}/`", "", "| module | what it holds |", "|---|---|"]
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root / package).as_posix()
            if "__pycache__" not in relative:
                parts.append(f"| `{relative}` | {_cell(_summary(path))} |")
        parts.append("")
    return "\n".join(parts)


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.split("\n\n")[0].replace("\n", " ")
