#!/usr/bin/env bash
# `make test-http`: the payments service over real HTTP on loopback, on a scratch PostgreSQL.
#
#   1. builds payments-api (HTTP_PROFILE, default debug) and, when missing, a Python venv
#      under build/venv-http with the suite's requirements (tests/conformance/requirements*.txt);
#   2. starts a scratch cluster (build/http-test/pg, port_of http) from PG_BINDIR (which must
#      have the extension installed), the mock processor as its own process, the service
#      (30 s lease) and a second service with --fault-injection and a 1 s lease, on 127.0.0.1
#      from http_port_of http (+1 the processor, +2 the fault-injection service, +3 a service
#      on a hot standby of the cluster, whose port is the cluster's + 1);
#   3. runs the client crate's tests against the database (every outcome and SQLSTATE, two
#      connections racing, a phased takeover with IK003, round trips per flow), the service's
#      unit tests, the conformance suite (tests/conformance: `core` and `full` against the
#      service, `crash` against the fault-injection one, which the suite restarts with
#      `scripts/http-test.sh restart-fault`), a schemathesis run against /openapi.json, and
#      the key-state route on a hot standby, and a check of the database: one payment per
#      tenant and key;
#   4. stops everything it started, whatever happens.
#
#   HTTP_FUZZ_EXAMPLES  examples per operation for schemathesis (default 200)
set -euo pipefail

NAME=http-test
. "$(dirname "$0")/lib.sh"
export PG_BINDIR
HTTP_PG_PORT=$(port_of http)
HTTP_PORT=$(http_port_of http)
export HTTP_PROFILE=${HTTP_PROFILE:-debug}
export HTTP_DIR=$ROOT/build/http-test
FUZZ_EXAMPLES=${HTTP_FUZZ_EXAMPLES:-200}
VENV=$ROOT/build/venv-http
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/$HTTP_PROFILE/payments-api
PROCESSOR_PORT=$((HTTP_PORT + 1))
FAULT_PORT=$((HTTP_PORT + 2))
STANDBY_PORT=$((HTTP_PORT + 3))
STANDBY_PG_PORT=$((HTTP_PG_PORT + 1))
export HTTP_DB_URL="postgresql://postgres@localhost/payments?host=$HTTP_DIR/pg&port=$HTTP_PG_PORT"
export HTTP_PROCESSOR_URL="http://127.0.0.1:$PROCESSOR_PORT"

# The fault-injection service: started here and by the suite after each crash.
start_fault_service() {
  local old
  old=$(cat "$HTTP_DIR/fault.pid" 2>/dev/null || true)
  [ -z "$old" ] || stop_pid "$old"
  ulimit -c 0
  setsid "$BIN" serve --database-url "$HTTP_DB_URL" --listen "127.0.0.1:$FAULT_PORT" \
    --processor-url "$HTTP_PROCESSOR_URL" --lease 1s --fault-injection \
    >>"$HTTP_DIR/fault.log" 2>&1 </dev/null &
  echo $! >"$HTTP_DIR/fault.pid"
  wait_http "http://127.0.0.1:$FAULT_PORT/healthz" 30 || die "the fault-injection service did not start (see $HTTP_DIR/fault.log)"
}

if [ "${1:-}" = restart-fault ]; then
  start_fault_service
  exit 0
fi

stop_all() {
  local f pid
  for f in standby fault service processor; do
    pid=$(cat "$HTTP_DIR/$f.pid" 2>/dev/null || true)
    [ -z "$pid" ] || stop_pid "$pid"
    rm -f "$HTTP_DIR/$f.pid"
  done
}

mkdir -p "$HTTP_DIR"
cd "$ROOT"

# --- 1. build and the Python environment -----------------------------------------------------
if ! command -v curl >/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "curl is missing (apt-get install curl)"
  log "installing curl (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi
log "building payments-api ($HTTP_PROFILE)"
cargo build -p payments-api $([ "$HTTP_PROFILE" = release ] && echo --release)
if ! "$VENV/bin/python" -c 'import httpx, pytest, schemathesis' 2>/dev/null; then
  log "installing the suite's Python packages into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r tests/conformance/requirements.txt -r tests/conformance/requirements-fuzz.txt
fi

require_installed

# --- 2. database, processor, services --------------------------------------------------------
rm -f "$HTTP_DIR"/*.log
cluster_stop "$HTTP_DIR/replica"
rm -rf "$HTTP_DIR/replica"
on_exit cluster_stop "$HTTP_DIR/replica"
cluster_fresh "$HTTP_DIR/pg" "$HTTP_PG_PORT"
on_exit stop_all
psql_at "$HTTP_DIR/pg" "$HTTP_PG_PORT" postgres -c 'CREATE DATABASE payments' -c 'CREATE DATABASE client_tests'

setsid "$BIN" mock-processor --listen "127.0.0.1:$PROCESSOR_PORT" >"$HTTP_DIR/processor.log" 2>&1 </dev/null &
echo $! >"$HTTP_DIR/processor.pid"
wait_http "$HTTP_PROCESSOR_URL/charges?idempotency_key=probe" 30 || die "the mock processor did not start"

setsid "$BIN" serve --database-url "$HTTP_DB_URL" --listen "127.0.0.1:$HTTP_PORT" \
  --processor-url "$HTTP_PROCESSOR_URL" >"$HTTP_DIR/service.log" 2>&1 </dev/null &
echo $! >"$HTTP_DIR/service.pid"
wait_http "http://127.0.0.1:$HTTP_PORT/healthz" 60 || die "the service did not start (see $HTTP_DIR/service.log)"
start_fault_service

# --- 3. the suites -----------------------------------------------------------------------------
log "client crate and service: Rust tests (the client's against the database)"
IDEMPOTENCY_TEST_DATABASE_URL="postgresql://postgres@localhost/client_tests?host=$HTTP_DIR/pg&port=$HTTP_PG_PORT" \
  cargo test -p idempotency-client --features db-tests $([ "$HTTP_PROFILE" = release ] && echo --release)
cargo test -p payments-api $([ "$HTTP_PROFILE" = release ] && echo --release)

log "conformance suite: core and full"
"$VENV/bin/python" -m pytest tests/conformance -q -p no:cacheprovider --no-skip \
  --base-url "http://127.0.0.1:$HTTP_PORT" --processor-url "$HTTP_PROCESSOR_URL" -m "core or full"

log "conformance suite: crash (fault injection, 1 s lease)"
"$VENV/bin/python" -m pytest tests/conformance -q -p no:cacheprovider --no-skip \
  --base-url "http://127.0.0.1:$FAULT_PORT" --processor-url "$HTTP_PROCESSOR_URL" -m crash \
  --lease 1 --restart-command "bash $ROOT/scripts/http-test.sh restart-fault"

# One worker: with two, hypothesis (describing a filter lambda with CPython 3.11's ast)
# failed once with "AST constructor recursion depth mismatch", an error of the tool itself.
log "schema-driven fuzzing of /openapi.json (schemathesis, $FUZZ_EXAMPLES examples per operation)"
(cd tests/conformance && SCHEMATHESIS_HOOKS=st_hooks "$VENV/bin/schemathesis" --config-file schemathesis.toml \
  run "http://127.0.0.1:$HTTP_PORT/openapi.json" \
  --checks all --exclude-checks ignored_auth --max-examples "$FUZZ_EXAMPLES" --seed 1 --workers 1 \
  --phases examples,coverage,fuzzing --request-timeout 30 \
  -H "Authorization: Bearer fuzz" --warnings off --no-color \
  --suppress-health-check too_slow,filter_too_much)

log "hot standby: the key-state route answers from a replica, writes answer 503"
[ "$(id -u)" -ne 0 ] || { mkdir -p "$HTTP_DIR/replica"; chown postgres: "$HTTP_DIR/replica"; }
as_owner "$PG_BINDIR/pg_basebackup" -h "$HTTP_DIR/pg" -p "$HTTP_PG_PORT" -U postgres \
  -D "$HTTP_DIR/replica/data" -R -X stream -c fast
cluster_start "$HTTP_DIR/replica" "$STANDBY_PG_PORT"
first=$(curl -s -X POST "http://127.0.0.1:$HTTP_PORT/v1/payments" -H 'Authorization: Bearer standby' \
  -H 'Idempotency-Key: "sb-1"' -d '{"amount": "10.00", "currency": "EUR", "card": "tok_visa"}')
lsn=$(sql "$HTTP_DIR/pg" "$HTTP_PG_PORT" postgres 'SELECT pg_current_wal_insert_lsn()')
for i in $(seq 1 300); do
  [ "$(sql "$HTTP_DIR/replica" "$STANDBY_PG_PORT" postgres "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" = t ] && break
  [ "$i" -lt 300 ] || die "the replica did not replay up to $lsn"
  sleep 0.1
done
setsid "$BIN" serve --database-url "postgresql://postgres@localhost/payments?host=$HTTP_DIR/replica&port=$STANDBY_PG_PORT" \
  --listen "127.0.0.1:$STANDBY_PORT" --processor-url "$HTTP_PROCESSOR_URL" >"$HTTP_DIR/standby.log" 2>&1 </dev/null &
echo $! >"$HTTP_DIR/standby.pid"
wait_http "http://127.0.0.1:$STANDBY_PORT/healthz" 60 || die "the service on the standby did not start (see $HTTP_DIR/standby.log)"
"$VENV/bin/python" - "$HTTP_PORT" "$STANDBY_PORT" "$first" <<'PY' || die "the service on a hot standby"
import json, sys, httpx
primary, standby, first = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
h = {"Authorization": "Bearer standby"}
on_p = httpx.get(f"http://127.0.0.1:{primary}/v1/idempotency-keys/sb-1", headers=h)
on_s = httpx.get(f"http://127.0.0.1:{standby}/v1/idempotency-keys/sb-1", headers=h)
assert on_s.status_code == 200 and on_s.json() == on_p.json(), (on_s.text, on_p.text)
assert on_s.json()["state"] == "completed" and on_s.json()["resource"] == "payments/" + first["id"]
g = httpx.get(f"http://127.0.0.1:{standby}/v1/payments/{first['id']}", headers=h)
assert g.status_code == 200 and g.json() == first, g.text
w = httpx.post(f"http://127.0.0.1:{standby}/v1/payments", headers={**h, "Idempotency-Key": '"sb-2"'},
               json={"amount": "1.00", "currency": "EUR", "card": "tok_visa"})
assert w.status_code == 503 and w.json()["code"] == "service_unavailable" and w.headers["retry-after"] == "1", w.text
print("standby: key state and payment read from the replica; a write answered 503 service_unavailable")
PY

log "database: one payment per tenant and key"
dups=$(sql "$HTTP_DIR/pg" "$HTTP_PG_PORT" payments \
  "SELECT count(*) FROM (SELECT 1 FROM payments GROUP BY tenant, idempotency_key HAVING count(*) > 1) d")
[ "$dups" = 0 ] || die "$dups keys have more than one payment"
crashed=$(grep -c 'terminated by signal\|PANIC' "$HTTP_DIR/pg/server.log" || true)
[ "$crashed" = 0 ] || die "the server log shows a crashed backend"
log "all passed"
