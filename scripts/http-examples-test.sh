#!/usr/bin/env bash
# The example payments services of the client libraries (clients/python/examples/payments on
# Starlette, clients/typescript/examples/payments on Express) against the HTTP conformance
# suite's `core` set (tests/conformance), over loopback.
#
# A scratch cluster build/http-examples on HTTP_EXAMPLES_PG_PORT (default 54523) from PG_BINDIR
# (default the system PostgreSQL 15, with the extension installed), one database per service,
# the services on 127.0.0.1:HTTP_EXAMPLES_PORT and +1 (default 18120, 18121). Python packages
# into build/venv-clients and npm packages into clients/typescript/node_modules when missing.
# Everything it started is stopped, whatever happens.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
NAME=http-examples
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_PORT=${HTTP_EXAMPLES_PG_PORT:-54523}
PORT=${HTTP_EXAMPLES_PORT:-18120}
DIR=$ROOT/build/http-examples
export PG_BINDIR
. scripts/testlib.sh
require_installed

VENV=$(bash scripts/client-venv.sh)
bash scripts/client-npm.sh
rm -rf "$DIR"
mkdir -p "$DIR"
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  bash scripts/pgcluster.sh stop "$DIR/pg"
}
trap cleanup EXIT
bash scripts/pgcluster.sh start "$DIR/pg" "$PG_PORT"
for db in python typescript; do sql "$DIR/pg" "$PG_PORT" postgres "CREATE DATABASE payments_$db" >/dev/null; done
url() { echo "postgresql://postgres@localhost/payments_$1?host=$DIR/pg&port=$PG_PORT"; }

"$VENV/bin/python" clients/python/examples/payments/payments.py serve \
  --database-url "$(url python)" --listen "127.0.0.1:$PORT" >"$DIR/python.log" 2>&1 &
pids+=($!)
node clients/typescript/dist/examples/payments/server.js serve \
  --database-url "$(url typescript)" --listen "127.0.0.1:$((PORT + 1))" >"$DIR/typescript.log" 2>&1 &
pids+=($!)

wait_healthy() {
  local i
  for i in $(seq 1 300); do
    curl -sf -o /dev/null "$1/healthz" && return 0
    sleep 0.1
  done
  cat "$DIR"/*.log >&2
  fail "$1 did not answer /healthz in 30 s"
}

status=0
for lang in python typescript; do
  base=http://127.0.0.1:$PORT
  [ "$lang" = typescript ] && base=http://127.0.0.1:$((PORT + 1))
  wait_healthy "$base"
  step "conformance core set against the $lang example ($base)"
  if ! "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/conformance -m core --base-url "$base"; then
    status=1
    printf -- '--- %s service log ---\n' "$lang" >&2
    tail -n 50 "$DIR/$lang.log" >&2
  fi
done
[ "$status" -eq 0 ] || fail "an example service failed the core set"
step "both example services pass the core set"
