#!/usr/bin/env bash
# The local service stack on 127.0.0.1: Prefect server, MLflow server, optionally a process worker.
#   deployments/stack.sh start            # servers in the background (SQLite; PostgreSQL with DATABASE_URL)
#   deployments/stack.sh pool             # the work pool shrinkflow-process, created if missing
#   deployments/stack.sh worker           # a process worker for pool shrinkflow-process, in the background
#   deployments/stack.sh env              # the exports that point clients at the stack
#   deployments/stack.sh stop             # stop everything this script started, by PID
# Settings (environment): PREFECT_PORT (4200), MLFLOW_PORT (5000), STACK_DIR (.stack: logs, PIDs, SQLite
# files, MLflow artifacts), DATABASE_URL=postgresql://user:password@host:port (databases prefect and mlflow
# must exist on that server).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${BIN:-$ROOT/.venv/bin}"
STACK_DIR="$(mkdir -p "${STACK_DIR:-$ROOT/.stack}" && cd "${STACK_DIR:-$ROOT/.stack}" && pwd)"
PREFECT_PORT="${PREFECT_PORT:-4200}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
export PREFECT_HOME="$STACK_DIR/prefect-home"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export PREFECT_SERVER_ANALYTICS_ENABLED=false

wait_for() {  # url, name, seconds
  for _ in $(seq "$3"); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    if ! kill -0 "$(cat "$STACK_DIR/$2.pid")" 2>/dev/null; then
      echo "stack: $2 exited; last lines of $STACK_DIR/$2.log:" >&2
      tail -5 "$STACK_DIR/$2.log" >&2
      return 1
    fi
    sleep 1
  done
  echo "stack: $2 did not answer at $1 within $3 s; see $STACK_DIR/$2.log" >&2
  return 1
}

start_bg() {  # name, command...
  local name=$1; shift
  setsid "$@" > "$STACK_DIR/$name.log" 2>&1 < /dev/null &
  echo $! > "$STACK_DIR/$name.pid"
}

case "${1:-}" in
  start)
    if [ -n "${DATABASE_URL:-}" ]; then
      base="${DATABASE_URL%/}"
      export PREFECT_API_DATABASE_CONNECTION_URL="${base/postgresql:/postgresql+asyncpg:}/prefect"
      backend="${base/postgresql:/postgresql+psycopg2:}/mlflow"
    else
      backend="sqlite:///$STACK_DIR/mlflow.db"
    fi
    start_bg prefect "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
    start_bg mlflow "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --backend-store-uri "$backend" \
      --artifacts-destination "$STACK_DIR/mlflow-artifacts" --workers 1
    wait_for "http://127.0.0.1:$PREFECT_PORT/api/health" prefect 120
    wait_for "http://127.0.0.1:$MLFLOW_PORT/health" mlflow 120
    echo "Prefect UI http://127.0.0.1:$PREFECT_PORT   MLflow UI http://127.0.0.1:$MLFLOW_PORT"
    "$0" env
    ;;
  pool)
    "$BIN/prefect" work-pool inspect shrinkflow-process > /dev/null 2>&1 \
      || "$BIN/prefect" work-pool create shrinkflow-process --type process > /dev/null
    echo "work pool shrinkflow-process ready"
    ;;
  worker)
    "$0" pool > /dev/null
    MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT" start_bg worker "$BIN/prefect" worker start \
      --pool shrinkflow-process --name "shrinkflow-$(hostname)-$$"
    echo "worker started (log: $STACK_DIR/worker.log)"
    ;;
  env)
    echo "export PREFECT_API_URL=$PREFECT_API_URL"
    echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT"
    ;;
  stop)
    # TERM to every process group at once, then wait (up to 10 s) for all of them together.
    stopping=()
    for name in worker mlflow prefect; do
      pidfile="$STACK_DIR/$name.pid"
      [ -f "$pidfile" ] || continue
      kill -TERM -- "-$(cat "$pidfile")" 2>/dev/null || true
      stopping+=("$name")
    done
    for _ in $(seq 20); do
      alive=0
      for name in "${stopping[@]}"; do kill -0 "$(cat "$STACK_DIR/$name.pid")" 2>/dev/null && alive=1; done
      [ "$alive" = 0 ] && break
      sleep 0.5
    done
    for name in "${stopping[@]}"; do
      pid=$(cat "$STACK_DIR/$name.pid")
      kill -KILL -- "-$pid" 2>/dev/null || true
      rm -f "$STACK_DIR/$name.pid"
      echo "stopped $name ($pid)"
    done
    ;;
  *)
    sed -n '2,11p' "$0"; exit 2 ;;
esac
