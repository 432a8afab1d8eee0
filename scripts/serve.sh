#!/usr/bin/env bash
# `make serve`: a scratch PostgreSQL with the extension (build/serve, from PG_BINDIR), then
# payments-api on SERVE_LISTEN (default 127.0.0.1:8080) with its in-process mock card
# processor, in the foreground. Ctrl-C (or SIGTERM) stops the service and the server; nothing
# is left running.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
require_installed
scratch serve
LISTEN=${SERVE_LISTEN:-127.0.0.1:8080}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/payments-api
cargo build -q -p payments-api

trap 'exit 130' INT TERM
cluster_up "$DIR" "$PORT"
psql_at "$DIR" "$PORT" postgres -c 'DROP DATABASE IF EXISTS payments' -c 'CREATE DATABASE payments'

cat >&2 <<MSG

payments-api on http://$LISTEN (database: psql -h $DIR -p $PORT -U postgres payments)
Try:
  curl -i -X POST http://$LISTEN/v1/payments -H 'Authorization: Bearer acme' \\
       -H 'Idempotency-Key: "k-1"' -d '{"amount": "10.00", "currency": "EUR", "card": "tok_visa"}'
Ctrl-C stops the service and the database.

MSG
"$BIN" serve --database-url "postgresql://postgres@localhost/payments?host=$DIR&port=$PORT" --listen "$LISTEN" &
on_exit stop_pid $!
wait
