#!/usr/bin/env bash
# `make demo`: the payment story told on a scratch PostgreSQL, as a transcript that someone
# who never saw the project can read: a first request, its retry, a reused key, a concurrent
# duplicate, and a holder that dies half-way through a phased request.
#
# Needs the extension installed into the PostgreSQL of PG_BINDIR (default: the system
# PostgreSQL 15; `make demo` installs it first). Every step's result is checked, not only printed: the script
# exits non-zero at the first step that does not show what it should. The server is
# stopped on exit, whatever happens.
set -euo pipefail

. "$(dirname "$0")/lib.sh"
scratch demo
SCOPE='tenant:42 POST /v1/payments'

finish() {
  if [ "$EXIT_STATUS" -eq 0 ]; then
    printf '\nDemo finished: every step showed what it should.\n'
  else
    printf '\nDemo FAILED (exit code %s).\n' "$EXIT_STATUS" >&2
  fi
}
# A background client still running would keep its connection: end it before the server.
SESSION_A_PID=
end_session_a() {
  if [ -n "$SESSION_A_PID" ] && kill -0 "$SESSION_A_PID" 2>/dev/null; then
    kill "$SESSION_A_PID" 2>/dev/null || true
    wait "$SESSION_A_PID" 2>/dev/null || true
  fi
}
on_exit finish

# Every client below is a plain psql (scripts/lib.sh psql_at) that shows its command tags.
PSQL=(psql_at "$DIR" "$PORT" demo -v QUIET=off -v "scope=$SCOPE")

# Narration: a heading for each part of the story, and plain sentences.
part() { printf '\n\n==== %s ====\n' "$*"; }
say() { printf '\n%s\n' "$*"; }

# One client session: runs the psql script on stdin, echoing each statement and its
# result. The transcript is printed (indented) and kept in $OUT for the checks.
OUT=
client() {
  local rc=0
  OUT=$("${PSQL[@]}" -e "$@" 2>&1) || rc=$?
  printf '%s\n' "$OUT" | sed 's/^/    /'
  [ $rc -eq 0 ] || die "a statement failed that should not have (psql exit code $rc)"
}

# A single value from the database, for the checks.
query() { sql "$DIR" "$PORT" demo "$1"; }

# expect_field NAME VALUE: the last client's expanded (\gx) output shows NAME = VALUE.
expect_field() {
  grep -Eq "^$1 +\\| $2 *\$" <<<"$OUT" \
    || die "expected $1 = '$2' in the output above"
}
# expect_text TEXT: the last client's output contains TEXT.
expect_text() {
  grep -Fq -- "$1" <<<"$OUT" || die "expected '$1' in the output above"
}
# expect_query SQL VALUE: a check query answers VALUE.
expect_query() {
  local got
  got=$(query "$1")
  [ "$got" = "$2" ] || die "check '$1' answered '$got', expected '$2'"
}

# --- a scratch server with the extension -------------------------------------------

require_installed
cluster_up "$DIR" "$PORT"
on_exit end_session_a
# A fresh database each time, so the story starts from nothing.
sql "$DIR" "$PORT" postgres 'DROP DATABASE IF EXISTS demo'
sql "$DIR" "$PORT" postgres 'CREATE DATABASE demo'

part "Setting the scene"
say "A payment API stores payments in a table. The idempotency extension remembers each
request's Idempotency-Key, so that a retried request never charges twice."
client <<'SQL'
CREATE EXTENSION idempotency;
SELECT extversion FROM pg_extension WHERE extname = 'idempotency';
-- No unique constraint on the key: preventing duplicates is the extension's job here.
CREATE TABLE payments (
  id              serial PRIMARY KEY,
  idempotency_key text NOT NULL,
  amount          numeric(12,2) NOT NULL,
  currency        text NOT NULL,
  charge_id       text
);
SQL

# --- (a) ---------------------------------------------------------------------------
part "(a) A first request: POST /v1/payments, 10.00 EUR, Idempotency-Key k-123"
say "The backend claims the key, writes the payment and stores the outcome, all in ONE
transaction: they commit together or not at all."
client <<'SQL'
BEGIN;
SELECT outcome, state, attempt, http_status
  FROM idem_begin(:'scope', 'k-123', '{"amount": "10.00", "currency": "EUR"}') \gx
\echo '-- outcome execute: this request holds the key and does the work'
INSERT INTO payments (idempotency_key, amount, currency)
  VALUES ('k-123', 10.00, 'EUR') RETURNING id \gset payment_
\set resource 'payments/' :payment_id
\echo '-- stored payment' :payment_id
SELECT idem_complete(:'scope', 'k-123', resource => :'resource', http_status => 201);
COMMIT;
SQL
expect_field outcome execute
expect_field attempt 1
expect_query "SELECT count(*) FROM payments WHERE idempotency_key = 'k-123'" 1
K123_RESOURCE="payments/$(query "SELECT id FROM payments WHERE idempotency_key = 'k-123'")"
expect_query "SELECT concat_ws(' ', state, http_status, resource) FROM idem_check('$SCOPE', 'k-123')" \
  "completed 201 $K123_RESOURCE"
say "The client gets 201 Created, Location: /v1/$K123_RESOURCE"

# --- (b) ---------------------------------------------------------------------------
part "(b) The response was lost on the way: the client retries the same request"
client <<'SQL'
BEGIN;
SELECT outcome, state, attempt, http_status, resource
  FROM idem_begin(:'scope', 'k-123', '{"amount": "10.00", "currency": "EUR"}') \gx
\echo '-- outcome replay: answer with the stored 201 and resource, do not pay again'
COMMIT;
SELECT id, idempotency_key, amount, currency FROM payments ORDER BY id;
SQL
expect_field outcome replay
expect_field http_status 201
expect_field resource "$K123_RESOURCE"
expect_query "SELECT count(*) FROM payments WHERE idempotency_key = 'k-123'" 1
say "Still one payment: the retry was answered from the stored outcome
(with the header Idempotent-Replayed: true)."

# --- (c) ---------------------------------------------------------------------------
part "(c) A buggy client reuses k-123 for a different payment: 100.00 EUR"
say "The same key with a different command is an error with SQLSTATE IK001 (the API answers 422)."
client <<'SQL'
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
\set SHOW_CONTEXT never
BEGIN;
SELECT outcome FROM idem_begin(:'scope', 'k-123', '{"amount": "100.00", "currency": "EUR"}');
ROLLBACK;
\echo '-- the SQLSTATE the client received:' :LAST_ERROR_SQLSTATE
SQL
expect_text "ERROR:  IK001"
expect_text "DETAIL:  "
expect_text "HINT:  "
expect_text "the SQLSTATE the client received: IK001"
expect_query "SELECT count(*) FROM payments" 1
expect_query "SELECT concat_ws(' ', state, matches) FROM idem_check('$SCOPE', 'k-123', '{\"amount\": \"10.00\", \"currency\": \"EUR\"}')" \
  "completed t"

# --- (d) ---------------------------------------------------------------------------
part "(d) Two copies of one request arrive at the same time (key k-456, 25.00 EUR)"
say "Session A claims the key and is still working (its transaction is open for 3 seconds)."
PGAPPNAME=demo-session-a "${PSQL[@]}" -e >"$DIR/session-a.log" 2>&1 <<'SQL' &
BEGIN;
SELECT outcome, state, attempt
  FROM idem_begin(:'scope', 'k-456', '{"amount": "25.00", "currency": "EUR"}') \gx
SELECT pg_sleep(3);  -- the work takes a while
INSERT INTO payments (idempotency_key, amount, currency)
  VALUES ('k-456', 25.00, 'EUR') RETURNING id \gset payment_
\set resource 'payments/' :payment_id
SELECT idem_complete(:'scope', 'k-456', resource => :'resource', http_status => 201);
COMMIT;
SQL
SESSION_A_PID=$!
# Session B must arrive while A's claim is held and uncommitted: wait until A is sleeping.
a_working=
for _ in $(seq 1 100); do
  if [ "$(query "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'demo-session-a' AND query LIKE 'SELECT pg_sleep%'")" = 1 ]; then
    a_working=yes; break
  fi
  kill -0 "$SESSION_A_PID" 2>/dev/null || { cat "$DIR/session-a.log" >&2; die "session A ended early"; }
  sleep 0.1
done
[ -n "$a_working" ] || { cat "$DIR/session-a.log" >&2; die "session A never got to its work"; }
say "Meanwhile session B sends the same request. It does not wait for A (idempotency.wait
is 0 by default): it answers in_progress at once, and the API answers 409."
t0=$(date +%s%N)
client <<'SQL'
SELECT outcome, state, attempt, http_status
  FROM idem_begin(:'scope', 'k-456', '{"amount": "25.00", "currency": "EUR"}') \gx
SQL
elapsed_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
expect_field outcome in_progress
expect_field http_status 409
[ "$elapsed_ms" -lt 1500 ] || die "session B took ${elapsed_ms} ms: it waited for session A"
kill -0 "$SESSION_A_PID" 2>/dev/null || die "session A had already finished: B did not meet an open claim"
say "(session B answered in ${elapsed_ms} ms, while A was still working)"
say "Session A finishes its work and commits. Its transcript:"
rc=0; wait "$SESSION_A_PID" || rc=$?
SESSION_A_PID=
sed 's/^/    A| /' "$DIR/session-a.log"
[ $rc -eq 0 ] || die "session A failed (psql exit code $rc)"
grep -Eq '^outcome +\| execute' "$DIR/session-a.log" || die "session A did not get outcome execute"
say "The client behind B retries later and gets A's outcome."
client <<'SQL'
SELECT outcome, http_status, resource
  FROM idem_begin(:'scope', 'k-456', '{"amount": "25.00", "currency": "EUR"}') \gx
SQL
expect_field outcome replay
expect_field http_status 201
expect_query "SELECT count(*) FROM payments WHERE idempotency_key = 'k-456'" 1

# --- (e) ---------------------------------------------------------------------------
part "(e) Phases: a request that calls a card processor (key k-789, 40.00 EUR)"
say "A charge at a card processor cannot roll back with the database, so this request works
in phases: it commits its claim with a lease of 2 seconds, charges the card, records a
checkpoint, and would complete in a later transaction. But its process dies after the
checkpoint."
client <<'SQL'
SELECT outcome, state, attempt
  FROM idem_begin(:'scope', 'k-789', '{"amount": "40.00", "currency": "EUR"}',
                  lease => '2 seconds') \gx
\echo '-- (the card processor charges the card: charge ch_1)'
SELECT idem_checkpoint(:'scope', 'k-789', 'charged', '{"charge_id": "ch_1"}');
\echo '-- the process dies here, before idem_complete'
SQL
expect_field outcome execute
expect_field attempt 1
say "A retry arrives right away: the lease still holds, so it gets in_progress (409)."
client <<'SQL'
SELECT outcome, state, attempt, http_status
  FROM idem_begin(:'scope', 'k-789', '{"amount": "40.00", "currency": "EUR"}') \gx
SQL
expect_field outcome in_progress
expect_field http_status 409
say "Two and a half seconds later the lease has run out. The next retry takes over
(attempt 2) and learns where the dead holder got to: the card was already charged,
so it records the payment without charging again, and completes in one transaction."
sleep 2.5
client <<'SQL'
BEGIN;
SELECT outcome, state, attempt, recovery_point, recovery_data
  FROM idem_begin(:'scope', 'k-789', '{"amount": "40.00", "currency": "EUR"}') \gx
\echo '-- recovery point charged: record charge ch_1 instead of charging again;'
\echo '-- this holder is attempt 2 and says so when it completes'
INSERT INTO payments (idempotency_key, amount, currency, charge_id)
  VALUES ('k-789', 40.00, 'EUR', 'ch_1') RETURNING id \gset payment_
\set resource 'payments/' :payment_id
SELECT idem_complete(:'scope', 'k-789', resource => :'resource', http_status => 201,
                     attempt => 2);
COMMIT;
SQL
expect_field outcome execute
expect_field attempt 2
expect_field recovery_point charged
expect_field recovery_data '\{"charge_id": "ch_1"\}'
expect_query "SELECT concat_ws(' ', state, attempt, http_status) FROM idem_check('$SCOPE', 'k-789')" \
  "completed 2 201"
say "The first holder was not dead after all, only very slow. It wakes up and tries to
complete with its own attempt number, 1. Fencing refuses it: SQLSTATE IK003, lease lost."
client <<'SQL'
\set ON_ERROR_STOP 0
\set VERBOSITY verbose
\set SHOW_CONTEXT never
SELECT idem_complete(:'scope', 'k-789', resource => 'payments/999', http_status => 201,
                     attempt => 1);
\echo '-- the SQLSTATE the late holder received:' :LAST_ERROR_SQLSTATE
SQL
expect_text "ERROR:  IK003"
expect_text "the SQLSTATE the late holder received: IK003"
expect_query "SELECT concat_ws(' ', state, attempt, resource) FROM idem_check('$SCOPE', 'k-789')" \
  "completed 2 $(query "SELECT 'payments/' || id FROM payments WHERE idempotency_key = 'k-789'")"

# --- the ledger --------------------------------------------------------------------
part "The ledger: exactly one payment per key"
client <<'SQL'
SELECT idempotency_key, count(*) AS payments, sum(amount) AS amount, string_agg(charge_id, ',') AS charge
  FROM payments GROUP BY idempotency_key ORDER BY idempotency_key;
SELECT k AS key, c.state, c.attempt, c.http_status, c.resource
  FROM unnest(ARRAY['k-123', 'k-456', 'k-789']) AS k, idem_check(:'scope', k) AS c;
SQL
expect_query "SELECT string_agg(idempotency_key || '=' || n, ' ' ORDER BY idempotency_key)
                FROM (SELECT idempotency_key, count(*) AS n FROM payments GROUP BY 1) s" \
  "k-123=1 k-456=1 k-789=1"
