#!/usr/bin/env bash
# The example payments services of the client libraries (clients/python/examples/payments on
# Starlette, clients/typescript/examples/payments on Express) against the HTTP conformance
# suite's `core` set (tests/conformance), over loopback.
#
# A fresh scratch cluster build/http-examples/pg from PG_BINDIR (with the extension
# installed), one database per service, the services on 127.0.0.1 (http_port_of
# http-examples, and the next port). Python packages into build/venv-clients and npm packages
# into clients/typescript/node_modules when missing. Everything it started is stopped,
# whatever happens.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
require_installed
scratch http-examples
PG_PORT=$PORT
HTTP=$(http_port_of http-examples)

VENV=$(bash scripts/client-venv.sh)
bash scripts/client-npm.sh
rm -rf "$DIR"
mkdir -p "$DIR"
cluster_fresh "$DIR/pg" "$PG_PORT"
for db in python typescript; do sql "$DIR/pg" "$PG_PORT" postgres "CREATE DATABASE payments_$db" >/dev/null; done
url() { echo "postgresql://postgres@localhost/payments_$1?host=$DIR/pg&port=$PG_PORT"; }

"$VENV/bin/python" clients/python/examples/payments/payments.py serve \
  --database-url "$(url python)" --listen "127.0.0.1:$HTTP" >"$DIR/python.log" 2>&1 &
on_exit stop_pid $!
node clients/typescript/dist/examples/payments/server.js serve \
  --database-url "$(url typescript)" --listen "127.0.0.1:$((HTTP + 1))" >"$DIR/typescript.log" 2>&1 &
on_exit stop_pid $!

status=0
for lang in python typescript; do
  base=http://127.0.0.1:$HTTP
  [ "$lang" = typescript ] && base=http://127.0.0.1:$((HTTP + 1))
  wait_http "$base/healthz" 30 || { cat "$DIR"/*.log >&2; die "$base did not answer /healthz in 30 s"; }
  log "conformance core set against the $lang example ($base)"
  if ! "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/conformance -m core --base-url "$base"; then
    status=1
    printf -- '--- %s service log ---\n' "$lang" >&2
    tail -n 50 "$DIR/$lang.log" >&2
  fi
done
[ "$status" -eq 0 ] || die "an example service failed the core set"
log "both example services pass the core set"
