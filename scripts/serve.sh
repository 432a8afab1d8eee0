#!/usr/bin/env bash
# `make serve`: a scratch PostgreSQL with the extension (build/serve, port SERVE_PG_PORT,
# default 54510, from PG_BINDIR), then payments-api on SERVE_LISTEN (default 127.0.0.1:8080)
# with its in-process mock card processor, in the foreground. Ctrl-C (or SIGTERM) stops the
# service and the server; nothing is left running.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PORT=${SERVE_PG_PORT:-54510}
LISTEN=${SERVE_LISTEN:-127.0.0.1:8080}
DIR=$ROOT/build/serve
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/payments-api

sharedir=$("$PG_BINDIR/pg_config" --sharedir)
[ -f "$sharedir/extension/idempotency.control" ] || {
  echo "serve: the extension is not installed in $sharedir/extension (make install PG_CONFIG=$PG_BINDIR/pg_config)" >&2
  exit 1
}
cargo build -q -p payments-api

SERVICE_PID=
stop() {
  trap - INT TERM EXIT
  if [ -n "$SERVICE_PID" ] && kill -0 "$SERVICE_PID" 2>/dev/null; then
    kill "$SERVICE_PID" 2>/dev/null || true
    wait "$SERVICE_PID" 2>/dev/null || true
  fi
  PG_BINDIR=$PG_BINDIR "$ROOT/scripts/pgcluster.sh" stop "$DIR"
}
trap stop EXIT
trap 'exit 130' INT TERM

PG_BINDIR=$PG_BINDIR "$ROOT/scripts/pgcluster.sh" start "$DIR" "$PORT"
"$PG_BINDIR/psql" -X -q -h "$DIR" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
  -c 'SET client_min_messages = warning' -c 'DROP DATABASE IF EXISTS payments' -c 'CREATE DATABASE payments'

cat >&2 <<EOF

payments-api on http://$LISTEN (database: psql -h $DIR -p $PORT -U postgres payments)
Try:
  curl -i -X POST http://$LISTEN/v1/payments -H 'Authorization: Bearer acme' \\
       -H 'Idempotency-Key: "k-1"' -d '{"amount": "10.00", "currency": "EUR", "card": "tok_visa"}'
Ctrl-C stops the service and the database.

EOF
"$BIN" serve --database-url "postgresql://postgres@localhost/payments?host=$DIR&port=$PORT" --listen "$LISTEN" &
SERVICE_PID=$!
wait "$SERVICE_PID"
