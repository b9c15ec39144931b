"""The docs cannot drift from the code: the generated pages name every task-file field and every command, and the
README stays a page a newcomer reads to the end."""

import argparse
import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipelines.cli.main import build_parser
from pipelines.spec import TaskSpec

ROOT = Path(__file__).resolve().parents[2]
README_COMMANDS = (
    "bash infra/setup.sh && bash examples/quickstart.sh",
    "LORAOPS_EXTRAS=test LORAOPS_SERVE=vllm bash infra/setup.sh && .venv/bin/python -m pytest -q",
)


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def task_file_fields(model: type[BaseModel] = TaskSpec, path: str = ""):
    """(section path, field name, FieldInfo, nested model or None) for every field a task file may hold."""
    for name, field in model.model_fields.items():
        if field.exclude:  # `source`: set by load_spec, never written in a task file
            continue
        nested = (
            field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        )
        yield path, name, field, nested
        if nested is not None:
            yield from task_file_fields(nested, f"{path}.{name}" if path else name)


def expected_defaults(model: type[BaseModel] = TaskSpec) -> dict:
    """The task file at its defaults, from model_fields alone (required fields: empty, i.e. None in YAML)."""
    out = {}
    for _, name, field, nested in task_file_fields(model):
        if nested is not None:
            out[name] = expected_defaults(nested)
        elif field.default_factory is not None:
            out[name] = field.default_factory()
        else:
            out[name] = None if field.default is PydanticUndefined else field.default
    return {name: out[name] for name, f in model.model_fields.items() if not f.exclude}


def sections_of(page: str) -> dict[str, str]:
    return {chunk.split("\n", 1)[0].strip(): chunk for chunk in re.split(r"(?m)^## ", page)[1:]}


def test_task_reference_shows_the_whole_file_at_the_defaults_of_the_schema(hooks):
    page = hooks.task_reference()
    block = re.search(r"```yaml\n(.*?)```", page, re.S).group(1)
    assert yaml.safe_load(block) == expected_defaults()


def test_task_reference_has_a_row_for_every_field_with_its_default_and_description(hooks):
    sections = sections_of(hooks.task_reference())
    fields = list(task_file_fields())
    assert len(fields) > 50  # the walk reached the nested sections
    for path, name, field, nested in fields:
        section = sections[path or "top level"]
        row = next((line for line in section.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{path or 'top level'}.{name} has no row in the task-file reference"
        if nested is not None:
            assert (f"{path}.{name}" if path else name) in sections
        elif field.is_required():
            assert "| required |" in row
        else:
            default = field.default_factory() if field.default_factory is not None else field.default
            rendered = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("\n...").strip()
            assert f"`{rendered}`" in row, f"{name}: default {rendered} missing from {row}"
        if field.description:
            assert " ".join(field.description.split()).replace("|", "\\|") in row


def test_every_field_declared_in_the_spec_has_a_description():
    """pipelines.spec's own fields (LoraSpec inherits the others from lora_core.LoraConfig, described there)."""
    missing = [
        f"{path}.{name}"
        for path, name, field, _ in task_file_fields()
        if not field.description and _declared_in_spec(path, name)
    ]
    assert missing == []


def _declared_in_spec(path: str, name: str) -> bool:
    model: type[BaseModel] = TaskSpec
    for part in filter(None, path.split(".")):
        model = model.model_fields[part].annotation
    owner = next(cls for cls in model.__mro__ if name in cls.__dict__.get("__annotations__", {}))
    return owner.__module__ == "pipelines.spec"


def test_commands_page_has_the_help_of_every_subcommand(hooks):
    page = hooks.cli_help()
    parser = build_parser()
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subparsers.choices) >= 10
    assert "usage: loraops" in page
    for name, sub in subparsers.choices.items():
        assert f"## loraops {name}\n" in page
        assert f"usage: loraops {name}" in page
        for action in sub._actions:
            for option in action.option_strings:
                assert option in page, f"loraops {name} {option} is missing from the commands page"


def test_readme_is_short_and_begins_with_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2].strip()  # the title, one sentence
    opening = "\n".join(lines[3:14])
    assert opening.strip().startswith("```bash")
    commands = re.findall(r"```bash\n(.*?)\n```", opening, re.S)
    assert tuple(commands) == README_COMMANDS


def test_readme_and_nav_point_at_pages_that_exist():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", readme))
    nav = set(re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), re.M))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert linked and linked <= pages
    assert nav == pages
