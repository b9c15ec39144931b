#!/usr/bin/env bash
# Set up .venv with loraops and its tested dependency set. Idempotent: re-running is cheap.
#   LORAOPS_EXTRAS=test     also installs the test dependencies.
#   LORAOPS_VENV=DIR        another virtual environment (default .venv).
#   LORAOPS_UNPINNED=1      install as users install packages: `pip install .`, no constraints file, not editable
#                           (CI checks that what pyproject.toml allows resolves to a set that imports and runs).
# With no NVIDIA GPU, torch comes from the CPU wheel (pip install torch==2.13.0) so nothing
# pulls a multi-GB CUDA build; with one, pip resolves pyproject's torch range to a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LORAOPS_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install "torch>=2.3,<3"
  else
    pip install torch==2.13.0
  fi
fi
extras=${LORAOPS_EXTRAS:+[$LORAOPS_EXTRAS]}
if [ "${LORAOPS_UNPINNED:-0}" = 1 ]; then
  pip install ".${extras}"
else
  pip install -c infra/constraints.txt -e ".${extras}"
fi
# LORAOPS_SERVE=vllm       also builds the serving engine's own venv (infra/setup-serve.sh).
if [ "${LORAOPS_SERVE:-}" = vllm ]; then
  PYTHON="$PY" bash infra/setup-serve.sh
fi
