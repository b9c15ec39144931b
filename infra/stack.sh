#!/usr/bin/env bash
# The team stack on one machine, no Docker: PostgreSQL (MLflow's and Prefect's databases), an S3-compatible store
# (MinIO when its `minio` binary is on PATH, else moto's standalone server: the same S3 API for loraops), an MLflow
# server proxying artifacts to the store, a Prefect server, a process work pool and its workers.
#
#   bash infra/stack.sh up       start what is not running (idempotent); prints the variables that point loraops at it
#   bash infra/stack.sh status   what runs, where, with which pid
#   bash infra/stack.sh down     stop what `up` started (by pid), nothing else
#
# Everything listens on 127.0.0.1; data, logs, pids and the variables file live under $LORAOPS_STACK
# (default ./.loraops-stack). `source $LORAOPS_STACK/stack.env` in a shell to use the stack. Ports come from
# LORAOPS_STACK_PORTS="postgres s3 mlflow prefect" (default "15432 9000 5000 4200", as infra/compose.yaml publishes).
# The pool: LORAOPS_WORKERS process workers (default 1), each running up to LORAOPS_CONCURRENT_RUNS flow runs at once,
# and at most LORAOPS_POOL_LIMIT in the whole pool (default workers x runs): `loraops run` submits every task at once
# and this limit alone decides how many run side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
STACK=$(realpath -m "${LORAOPS_STACK:-.loraops-stack}")
BIN=$(realpath -m "${LORAOPS_VENV:-.venv}/bin")
read -r PG_PORT S3_PORT MLFLOW_PORT PREFECT_PORT <<<"${LORAOPS_STACK_PORTS:-15432 9000 5000 4200}"
POOL=${LORAOPS_WORK_POOL:-loraops-cpu}
# Flow runs the worker runs at once (its --limit); each run sizes its threads to its share of the CPUs from the same
# number (pipelines/threads.py), so runs side by side share the cores instead of fighting over them.
RUNS=${LORAOPS_CONCURRENT_RUNS:-1}
KEY=loraops
SECRET=loraops-local-only   # the local store's own credentials; a team's real store has its own
WORKERS=${LORAOPS_WORKERS:-1}
POOL_LIMIT=${LORAOPS_POOL_LIMIT:-}
# worker: the pool's first worker; LORAOPS_WORKERS=N adds worker-2 ... worker-N
SERVICES=(postgres s3 mlflow prefect worker)

die() { echo "stack: error: $*" >&2; exit 1; }
pidfile() { echo "$STACK/pids/$1.pid"; }
services() {  # the servers and the configured workers (worker, worker-2, ...); --all: and any an earlier `up` left
  local i f
  {
    printf '%s\n' "${SERVICES[@]}"
    for ((i = 2; i <= WORKERS; i++)); do echo "worker-$i"; done
    if [ "${1:-}" = --all ]; then
      for f in "$STACK"/pids/worker-*.pid; do [ ! -e "$f" ] || basename "$f" .pid; done
    fi
  } | awk '!seen[$0]++'
}
running() {  # the service's recorded process is alive (a stale pid file is not)
  local f; f=$(pidfile "$1")
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}
port_free() { "$BIN/python" -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1])))" "$1" 2>/dev/null; }
wait_for() {  # wait_for NAME SECONDS COMMAND...: until COMMAND succeeds, or the service died, or time is up
  local name=$1 seconds=$2; shift 2
  for _ in $(seq $((seconds * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    running "$name" || break
    sleep 0.2
  done
  die "$name did not come up; see $STACK/logs/$name.log (last line: $(tail -n 1 "$STACK/logs/$name.log" 2>/dev/null))"
}
http_ok() { "$BIN/python" -c "import sys,urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$1"; }
launch() {  # launch NAME COMMAND...: in its own session (so `down` stops its children too), pid recorded
  local name=$1; shift
  setsid "$@" >>"$STACK/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$(pidfile "$name")"
}
claim_port() {  # claim_port NAME PORT: refuse a port something else holds
  port_free "$2" || die "port $2 for $1 is taken by another process; free it or set LORAOPS_STACK_PORTS"
}

pg_bin() {
  local found
  found=$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$found" ] || die "PostgreSQL is not installed; apt-get install postgresql (its binaries are enough)"
  dirname "$(realpath "$found")"
}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start_postgres() {
  local bin data=$STACK/postgres
  bin=$(pg_bin)
  if [ -f "$data/data/postmaster.pid" ] && as_pg "$bin/pg_ctl" -D "$data/data" status >/dev/null 2>&1; then return; fi
  claim_port postgres "$PG_PORT"
  if [ ! -f "$data/data/PG_VERSION" ]; then
    mkdir -p "$data"
    if [ "$(id -u)" = 0 ]; then  # initdb refuses root: the cluster belongs to the postgres user
      chown postgres "$data" && chmod 755 "$STACK"
      as_pg test -w "$data" || die "the postgres user cannot reach $data (a parent folder is private); set LORAOPS_STACK to a folder under one it can traverse, e.g. /srv/loraops-stack"
    fi
    as_pg "$bin/initdb" -D "$data/data" -U loraops -A trust --no-sync >"$STACK/logs/postgres-init.log" 2>&1 \
      || die "initdb failed; see $STACK/logs/postgres-init.log"
  fi
  as_pg "$bin/pg_ctl" -D "$data/data" -l "$data/server.log" -w -t 60 start \
    -o "-p $PG_PORT -k $data -c listen_addresses=127.0.0.1" >/dev/null || die "PostgreSQL did not start; see $data/server.log"
  head -n 1 "$data/data/postmaster.pid" >"$(pidfile postgres)"
  for db in mlflow prefect optuna; do  # optuna: search studies (MLflow's and Optuna's alembic tables would collide)
    as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U loraops -d postgres -tAc "select 1 from pg_database where datname='$db'" \
      | grep -q 1 || as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U loraops "$db"
  done
}

start_s3() {
  running s3 && return
  claim_port s3 "$S3_PORT"
  mkdir -p "$STACK/s3"
  if command -v minio >/dev/null; then
    MINIO_ROOT_USER=$KEY MINIO_ROOT_PASSWORD=$SECRET launch s3 minio server "$STACK/s3" --address "127.0.0.1:$S3_PORT"
  else
    launch s3 "$BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT"
  fi
  wait_for s3 60 "$BIN/python" -c "
import boto3
s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:$S3_PORT', aws_access_key_id='$KEY',
                  aws_secret_access_key='$SECRET', region_name='us-east-1')
names = {b['Name'] for b in s3.list_buckets()['Buckets']}
for bucket in ('mlflow-artifacts', 'loraops-promoted'):
    if bucket not in names:
        s3.create_bucket(Bucket=bucket)"
}

s3_env() { echo "AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT AWS_ACCESS_KEY_ID=$KEY AWS_SECRET_ACCESS_KEY=$SECRET AWS_DEFAULT_REGION=us-east-1"; }

start_mlflow() {
  running mlflow && return
  claim_port mlflow "$MLFLOW_PORT"
  # shellcheck disable=SC2046
  launch mlflow env $(s3_env) "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "postgresql+psycopg2://loraops@127.0.0.1:$PG_PORT/mlflow" --artifacts-destination s3://mlflow-artifacts
  wait_for mlflow 120 http_ok "http://127.0.0.1:$MLFLOW_PORT/health"
}

prefect_env() {
  echo "PREFECT_HOME=$STACK/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api"
}

start_prefect() {
  running prefect && return
  claim_port prefect "$PREFECT_PORT"
  # shellcheck disable=SC2046
  launch prefect env $(prefect_env) PREFECT_API_DATABASE_CONNECTION_URL="postgresql+asyncpg://loraops@127.0.0.1:$PG_PORT/prefect" \
    PREFECT_UI_ENABLED=false "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
  wait_for prefect 180 http_ok "http://127.0.0.1:$PREFECT_PORT/api/health"
}

start_pool() {  # the process pool, its concurrency limit set to LORAOPS_POOL_LIMIT (each `up`: a new value applies)
  # shellcheck disable=SC2046
  env $(prefect_env) "$BIN/prefect" work-pool inspect "$POOL" >/dev/null 2>&1 \
    || env $(prefect_env) "$BIN/prefect" work-pool create "$POOL" --type process >>"$STACK/logs/pool.log" 2>&1 \
    || die "could not create work pool $POOL; see $STACK/logs/pool.log"
  # shellcheck disable=SC2046
  env $(prefect_env) "$BIN/prefect" work-pool set-concurrency-limit "$POOL" "$POOL_LIMIT" >>"$STACK/logs/pool.log" 2>&1 \
    || die "could not set the concurrency limit of work pool $POOL; see $STACK/logs/pool.log"
}

start_worker() {  # start_worker NAME: one process worker of the pool
  local name=$1
  running "$name" && return
  mkdir -p "$STACK/worker-home"
  # The worker runs each flow as a child process with this environment: loraops pointed at the stack. Workers of
  # one stack share one LORAOPS_HOME (one machine): a run retried on another worker finds its cached steps. They
  # share its CPUs too: a run sizes its threads by the runs of the whole stack at once (SHARING), not its worker's.
  # shellcheck disable=SC2046
  launch "$name" env $(prefect_env) $(s3_env) PATH="$BIN:$PATH" PREFECT_WORKER_QUERY_SECONDS=2 \
    MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT" LORAOPS_PROMOTION_TARGET=s3://loraops-promoted/prod \
    LORAOPS_HOME="$STACK/worker-home" LORAOPS_CONCURRENT_RUNS="$SHARING" LORAOPS_STUDY_STORAGE="$(study_url)" \
    "$BIN/prefect" worker start --pool "$POOL" --type process --limit "$RUNS" --name "$POOL-$name"
  wait_for "$name" 60 grep -q "started" "$STACK/logs/$name.log"
}

study_url() {  # where searches keep their Optuna studies: trials on every worker and `loraops tune` share them
  echo "postgresql+psycopg2://loraops@127.0.0.1:$PG_PORT/optuna"
}

write_env() {
  cat >"$STACK/stack.env" <<EOF
# loraops on the local team stack (infra/stack.sh): source this file.
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
export LORAOPS_WORK_POOL=$POOL
export LORAOPS_PROMOTION_TARGET=s3://loraops-promoted/prod
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export LORAOPS_STUDY_STORAGE=$(study_url)
export AWS_ACCESS_KEY_ID=$KEY
export AWS_SECRET_ACCESS_KEY=$SECRET
export AWS_DEFAULT_REGION=us-east-1
EOF
}

up() {
  [ -x "$BIN/mlflow" ] && [ -x "$BIN/prefect" ] || die "no loraops environment at $BIN; run bash infra/setup.sh first"
  [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "LORAOPS_CONCURRENT_RUNS=$RUNS is not a positive whole number; set the runs the worker may run at once, or unset it for 1"
  [[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "LORAOPS_WORKERS=$WORKERS is not a positive whole number; set the number of workers, or unset it for 1"
  POOL_LIMIT=${POOL_LIMIT:-$((WORKERS * RUNS))}
  [[ $POOL_LIMIT =~ ^[1-9][0-9]*$ ]] || die "LORAOPS_POOL_LIMIT=$POOL_LIMIT is not a positive whole number; set the flow runs the pool may run at once, or unset it for workers x runs"
  SHARING=$((POOL_LIMIT < WORKERS * RUNS ? POOL_LIMIT : WORKERS * RUNS))  # runs on this machine at once, at most
  mkdir -p "$STACK/pids" "$STACK/logs"
  local before
  before=$(ls "$STACK/pids")
  # A failed `up` stops what this `up` started, nothing that was running before it.
  trap 'for s in $(services --all); do grep -qx "$s.pid" <<<"$before" || stop_one "$s"; done' EXIT
  for service in $(services); do
    case $service in
      worker) start_pool; start_worker worker ;;
      worker-*) start_worker "$service" ;;
      *) "start_$service" ;;
    esac
  done
  trap - EXIT
  write_env
  status
  echo
  cat "$STACK/stack.env"
}

stop_one() {
  local name=$1 f pid
  f=$(pidfile "$name")
  [ -f "$f" ] || return 0
  if [ "$name" = postgres ]; then
    as_pg "$(pg_bin)/pg_ctl" -D "$STACK/postgres/data" -m fast -w stop >/dev/null 2>&1 || true
  elif running "$name"; then
    pid=$(cat "$f")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  [ -d "$STACK/pids" ] && [ -n "$(ls -A "$STACK/pids" 2>/dev/null)" ] || { echo "stack: nothing is running under $STACK"; return 0; }
  local all
  mapfile -t all < <(services --all)
  for ((i=${#all[@]}-1; i>=0; i--)); do stop_one "${all[$i]}"; done
  echo "stack: stopped (data kept in $STACK)"
}

status() {
  local -A ports=([postgres]=$PG_PORT [s3]=$S3_PORT [mlflow]=$MLFLOW_PORT [prefect]=$PREFECT_PORT)
  for service in $(services --all); do
    if running "$service"; then
      printf '%-9s running  pid %-7s %s\n' "$service" "$(cat "$(pidfile "$service")")" "${ports[$service]:-pool $POOL}"
    elif [ -f "$(pidfile "$service")" ]; then
      printf '%-9s stale pid file (process gone): run up again\n' "$service"
    else
      printf '%-9s stopped\n' "$service"
    fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: bash infra/stack.sh up|down|status" ;;
esac
