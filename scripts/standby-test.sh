#!/usr/bin/env bash
# The hot standby test (`make test-standby`): a scratch primary (build/standby/primary, PORT)
# and a streaming replica of it made with pg_basebackup -R (build/standby/replica, PORT+1).
# Records are written on the primary; once the replica has replayed them:
#   - idem_check on the replica answers exactly the primary's rows (and the known values);
#   - idem_begin, idem_complete, idem_fail, idem_checkpoint, idem_forget and idem_purge on
#     the replica fail with SQLSTATE 25006 (read_only_sql_transaction) naming the function,
#     and change nothing (on the primary, a READ ONLY transaction gives the same code).
#
#   PG_BINDIR=/path/to/bin scripts/standby-test.sh [PORT]     (default: system PG 15, 54332)
#
# The extension must be installed into that PostgreSQL (`make install`). Both servers are
# stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PORT=${1:-${STANDBY_PORT:-54332}}
PORT2=$((PORT + 1))
BASE=$ROOT/build/standby
P=$BASE/primary
R=$BASE/replica
NAME=standby-test
# shellcheck source=testlib.sh
. "$ROOT/scripts/testlib.sh"

require_installed

cleanup() {
  "$ROOT/scripts/pgcluster.sh" stop "$R" || true
  "$ROOT/scripts/pgcluster.sh" stop "$P" || true
}
trap cleanup EXIT

# Start afresh every time: a replica must be a copy of this run's primary.
cleanup
rm -rf "$BASE"
mkdir -p "$P" "$R"
"$ROOT/scripts/pgcluster.sh" start "$P" "$PORT"

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then (cd / && sudo -u postgres -H -- "$@"); else "$@"; fi
}
# initdb's pg_hba.conf trusts local replication connections; wal_level is replica by default.
[ "$(id -u)" -ne 0 ] || chown postgres: "$R"
step "pg_basebackup -R of the primary into $R/data"
as_owner "$PG_BINDIR/pg_basebackup" -h "$P" -p "$PORT" -U postgres -D "$R/data" -R -X stream -c fast
# pgcluster.sh rewrites pgcluster.conf (port, socket directory) on start; -R wrote
# standby.signal and primary_conninfo (host=$P port=$PORT) into postgresql.auto.conf.
"$ROOT/scripts/pgcluster.sh" start "$R" "$PORT2"
expect_eq "the replica is in recovery" "$(sql "$R" "$PORT2" postgres "SELECT pg_is_in_recovery()")" t

sql "$P" "$PORT" postgres "CREATE DATABASE standby" >/dev/null
sql "$P" "$PORT" standby "CREATE EXTENSION idempotency" >/dev/null
psql_at "$P" "$PORT" standby -At >/dev/null <<'SQL'
BEGIN;
SELECT outcome FROM idem_begin('sb', 'completed', '{"amount": "10.00"}');
SELECT idem_complete('sb', 'completed', '{"id": 981}', 'payments/981', 201);
COMMIT;
BEGIN;
SELECT outcome FROM idem_begin('sb', 'failed', '{"amount": "20.00"}');
SELECT idem_fail('sb', 'failed', '{"code": "card_declined"}', false, 402);
COMMIT;
SELECT outcome FROM idem_begin('sb', 'held', '{"amount": "30.00"}', lease => '1 hour');
SELECT idem_checkpoint('sb', 'held', 'charged', '{"charge_id": "ch_1"}', attempt => 1);
SQL

# Wait until the replica has replayed everything the primary wrote.
lsn=$(sql "$P" "$PORT" postgres "SELECT pg_current_wal_insert_lsn()")
for i in $(seq 1 300); do
  [ "$(sql "$R" "$PORT2" postgres "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" = t ] && break
  [ "$i" -lt 300 ] || fail "the replica did not replay up to $lsn in 30 s"
  sleep 0.1
done
step "the replica replayed up to $lsn"

CHECK="SELECT k, c.* FROM (VALUES ('completed', '{\"amount\": \"10.00\"}'::jsonb),
         ('failed', '{\"amount\": \"20.00\"}'), ('held', '{\"amount\": \"30.00\"}'),
         ('absent', '{}')) v(k, cmd), idem_check('sb', v.k, v.cmd) c ORDER BY k"
on_primary=$(sql "$P" "$PORT" standby "$CHECK")
on_replica=$(sql "$R" "$PORT2" standby "$CHECK")
expect_eq "idem_check on the replica answers the primary's rows" "$on_replica" "$on_primary"
expect_eq "idem_check on the replica, exactly" \
  "$(sql "$R" "$PORT2" standby "SELECT k, state, matches, attempt, recovery_point, http_status, response, resource,
       created_at IS NOT NULL, expires_at > now(), lease_expires_at > now()
     FROM (VALUES ('completed', '{\"amount\": \"10.00\"}'::jsonb), ('failed', '{\"amount\": \"21.00\"}'),
                  ('held', '{\"amount\": \"30.00\"}'), ('absent', NULL)) v(k, cmd),
          idem_check('sb', v.k, v.cmd) ORDER BY k")" \
'absent|absent|||||||f||
completed|completed|t|1||201|{"id": 981}|payments/981|t|t|
failed|failed|f|1||402|{"code": "card_declined"}||t|t|
held|in_progress|t|1|charged||||t|t|t'

# Every writing function is refused before it takes a lock or touches the table.
for stmt in \
  "idem_begin()|SELECT * FROM idem_begin('sb', 'new', '{\"amount\": \"1.00\"}')" \
  "idem_begin()|SELECT * FROM idem_begin('sb', 'completed', '{\"amount\": \"10.00\"}')" \
  "idem_complete()|SELECT idem_complete('sb', 'held', resource => 'payments/1', http_status => 201)" \
  "idem_fail()|SELECT idem_fail('sb', 'held', '{\"code\": \"x\"}')" \
  "idem_checkpoint()|SELECT idem_checkpoint('sb', 'held', 'refunded')" \
  "idem_forget()|SELECT idem_forget('sb', 'completed')" \
  "idem_purge()|SELECT idem_purge()"; do
  fn=${stmt%%|*}
  expect_error "$R" "$PORT2" standby 25006 "${stmt#*|}" \
    "cannot execute ${fn//[()]/.} during recovery"
done
# The whole report as a client sees it: it names the function and sends the caller to the primary.
msg=$(psql_at "$R" "$PORT2" standby -At -c "SELECT * FROM idem_begin('sb', 'new', '{}')" 2>&1 || true)
expect_eq "the standby's report" "$msg" \
'ERROR:  cannot execute idem_begin() during recovery
DETAIL:  This server is a hot standby: it cannot write idempotency records.
HINT:  Call idem_begin() on the primary; idem_check() reads keys on a standby.'
step "on the replica: $msg"

# On the primary, a read-only transaction refuses the same calls with the same code.
for fn in "idem_begin()|SELECT * FROM idem_begin('sb', 'new', '{}')" \
  "idem_complete()|SELECT idem_complete('sb', 'held')" "idem_purge()|SELECT idem_purge()"; do
  expect_error "$P" "$PORT" standby 25006 "BEGIN READ ONLY; ${fn#*|}" \
    "cannot execute ${fn%%(*}..? in a read-only transaction"
done

expect_eq "nothing changed on the replica" "$(sql "$R" "$PORT2" standby "$CHECK")" "$on_primary"
expect_eq "nothing changed on the primary" "$(sql "$P" "$PORT" standby "$CHECK")" "$on_primary"

# A write on the primary still reaches the replica afterwards.
sql "$P" "$PORT" standby "SELECT idem_complete('sb', 'held', resource => 'payments/983', http_status => 201, attempt => 1)" >/dev/null
lsn=$(sql "$P" "$PORT" postgres "SELECT pg_current_wal_insert_lsn()")
for i in $(seq 1 300); do
  [ "$(sql "$R" "$PORT2" postgres "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" = t ] && break
  [ "$i" -lt 300 ] || fail "the replica did not replay up to $lsn in 30 s"
  sleep 0.1
done
expect_eq "the completion on the primary reads on the replica" \
  "$(sql "$R" "$PORT2" standby "SELECT state, http_status, resource, recovery_point FROM idem_check('sb', 'held')")" \
  'completed|201|payments/983|'
step "passed"
