#!/usr/bin/env bash
# Two tasks on one shared base (all-MiniLM-L6-v2, offline): each runs the Prefect flow
# prepare_data -> train -> evaluate -> merge -> analyze -> register -> promote on the embedded
# default (Prefect's local server for the run, MLflow on SQLite, promotion into a local folder,
# all under $LORAOPS_HOME, default ./.loraops). package-sections ships merged, server-sections
# ships the adapter only. Then the registry lookup and a prediction through each adapter.
set -euo pipefail
cd "$(dirname "$0")/.."
loraops=.venv/bin/loraops

$loraops run examples/tasks/package-sections.yaml examples/tasks/server-sections.yaml
echo; echo "== what serves each task in production, on which base"
$loraops adapters list
echo; $loraops adapters lineage package-sections
echo; echo "== predictions: one base in memory, the task adapters switched in place"
$loraops predict package-sections@production "chess engine with a graphical board" "scientific plotting library"
$loraops predict server-sections@production "IMAP and POP3 server" "web server with HTTP/2 support"
echo; echo "== the same production version as an MLflow Model (mlflow.pyfunc; mlflow models serve works alike)"
MLFLOW_TRACKING_URI="sqlite:///$(realpath "${LORAOPS_HOME:-.loraops}")/mlflow.db" .venv/bin/python -c '
import mlflow.pyfunc
print(mlflow.pyfunc.load_model("models:/package-sections@production").predict(["chess engine with a graphical board"]))'
