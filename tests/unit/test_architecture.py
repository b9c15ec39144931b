"""The layering and typing rules of DESIGN.md, checked on the source: a rule broken here fails at once, not far
from the change that broke it."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEP_MODULES = ("steps", "flows", "tasks", "ranking", "analysis", "evaluation", "distributed", "tracking", "lifecycle")


def sources(package: str) -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in sorted((ROOT / package).rglob("*.py"))}


def imported(tree: ast.Module, path: Path) -> set[str]:
    """Absolute names of the modules `tree` imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return names


def test_nothing_in_pipelines_imports_the_cli_but_the_cli():
    for path, tree in sources("pipelines").items():
        if "cli" not in path.relative_to(ROOT).parts:
            assert not {m for m in imported(tree, path) if m.startswith("pipelines.cli")}, path


def test_registry_imports_nothing_from_pipelines_and_names_it_nowhere():
    for path in (ROOT / "registry").rglob("*.py"):
        assert "pipelines" not in path.read_text(), path


def test_lora_core_imports_neither_registry_nor_pipelines_nor_mlflow_nor_prefect():
    for path, tree in sources("lora_core").items():
        heavy = {m.split(".")[0] for m in imported(tree, path)} & {"registry", "pipelines", "mlflow", "prefect"}
        assert not heavy, path


def test_the_registry_exports_load_lazily_and_all_of_them_resolve():
    import registry

    assert sorted(registry.__all__) == sorted(registry._MODULE_OF)
    assert all(getattr(registry, name) for name in registry.__all__)


def test_no_module_of_registry_is_longer_than_300_lines():
    long = {p.name: n for p in (ROOT / "registry").glob("*.py") if (n := len(p.read_text().splitlines())) > 300}
    assert not long


def test_registry_internals_are_used_only_inside_registry():
    pattern = re.compile(r"registry\.(client|book)\b|\.book\.")
    for package in ("pipelines", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            assert not pattern.search(path.read_text()), path


def annotations(function: ast.FunctionDef) -> list[ast.expr | None]:
    args = function.args
    every = args.posonlyargs + args.args + args.kwonlyargs
    return [a.annotation for a in every if a.arg not in ("self", "cls")] + [function.returns]


def test_no_function_in_pipelines_takes_or_returns_an_untyped_dict():
    for path, tree in sources("pipelines").items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                bare = [ast.unparse(a) for a in annotations(node) if a is not None and ast.unparse(a) == "dict"]
                assert not bare, f"{path.name}:{node.lineno} {node.name}"


@pytest.mark.parametrize("module", STEP_MODULES)
def test_every_public_step_function_is_annotated_in_and_out(module):
    tree = ast.parse((ROOT / "pipelines" / f"{module}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            missing = [i for i, a in enumerate(annotations(node)) if a is None]
            assert not missing, f"{module}.{node.name}: arguments or return without a type"


def test_the_cli_starts_without_importing_torch_mlflow_transformers_or_prefect():
    code = (
        "import sys; from pipelines.cli.main import build_parser; build_parser().format_help(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow', 'transformers', 'prefect'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("command", ["run", "tune"])
def test_a_bad_task_file_is_refused_before_torch_mlflow_transformers_or_prefect_load(tmp_path, command):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: x\n")
    code = (
        f"import sys; from pipelines.cli.main import main; print(main([{command!r}, {str(bad)!r}]))\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'mlflow', 'transformers', 'prefect'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["2", "[]"], done.stdout + done.stderr
    assert "type: required field is missing" in done.stderr


def test_the_lora_core_exports_load_lazily_and_all_of_them_resolve():
    import lora_core

    assert sorted(lora_core.__all__) == sorted(lora_core._MODULE_OF)
    assert all(getattr(lora_core, name) for name in lora_core.__all__)


def test_the_cli_knows_the_registry_choices_it_offers():
    import importlib

    from registry.aliases import SETTLE
    from registry.engines import ENGINES
    from registry.names import ALIASES

    cli = importlib.import_module("pipelines.cli.main")
    assert cli.ENGINES == ENGINES and cli.SETTLE == SETTLE and cli.ALIASES == ALIASES
