#!/usr/bin/env bash
# Install loraops the way Python packages are installed (a fresh venv, `pip install .[test]`, no constraints file)
# and run one real flow with it, outside the source tree: what pyproject.toml allows today must resolve, import
# and run. The resolved set is printed, so a break names the release that caused it.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
LORAOPS_VENV="$work/venv" LORAOPS_UNPINNED=1 LORAOPS_EXTRAS=test bash infra/setup.sh
"$work/venv/bin/python" -m pip --disable-pip-version-check check
"$work/venv/bin/python" -m pip --disable-pip-version-check freeze | grep -iE '^(prefect|fastapi|mlflow|transformers|torch|pydantic)=='
task=$PWD/examples/tasks/server-sections.yaml
(cd "$work" && LORAOPS_HOME="$work/home" "$work/venv/bin/loraops" run "$task")
test -f "$work/home/promoted/server-sections/v1/adapter/manifest.json"
echo "unpinned install: resolved, imported and ran server-sections end to end"
