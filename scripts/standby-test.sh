#!/usr/bin/env bash
# The hot standby test (`make test-standby`): a scratch primary (build/standby/primary) and a
# streaming replica of it made with pg_basebackup -R (build/standby/replica, the next port).
# Records of every state (tests/fixtures/records.sql) are written on the primary; once the
# replica has replayed them:
#   - idem_check on the replica answers exactly the primary's rows (and the known values);
#   - idem_begin, idem_complete, idem_fail, idem_checkpoint, idem_forget and idem_purge on
#     the replica fail with SQLSTATE 25006 (read_only_sql_transaction) naming the function,
#     and change nothing (on the primary, a READ ONLY transaction gives the same code).
#
#   scripts/standby-test.sh    (PG_BINDIR: the PostgreSQL to test, default the system 15;
#                               TEST_PORT moves the primary, the replica takes the next port)
#
# The extension must be installed into that PostgreSQL (`make install`). Both servers are
# stopped on exit.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_installed
scratch standby
P=$DIR/primary
R=$DIR/replica
PORT2=$((PORT + 1))

# wait_replayed: until the replica has replayed everything the primary wrote so far.
wait_replayed() {
  local lsn
  lsn=$(sql "$P" "$PORT" postgres "SELECT pg_current_wal_insert_lsn()")
  wait_true "$R" "$PORT2" postgres 30 "the replica replayed up to $lsn" \
    "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn"
  log "the replica replayed up to $lsn"
}

# Start afresh every time: a replica must be a copy of this run's primary.
cluster_stop "$R"
cluster_stop "$P"
rm -rf "$DIR"
mkdir -p "$P" "$R"
on_exit cluster_stop "$P"
on_exit cluster_stop "$R"
# wal_level logical: the end of the test decodes the primary's writes.
export PGCLUSTER_SETTINGS="${PGCLUSTER_SETTINGS:+$PGCLUSTER_SETTINGS
}wal_level = logical"
cluster_start "$P" "$PORT"

# initdb's pg_hba.conf trusts local replication connections; wal_level is replica by default.
[ "$(id -u)" -ne 0 ] || chown postgres: "$R"
log "pg_basebackup -R of the primary into $R/data"
as_owner "$PG_BINDIR/pg_basebackup" -h "$P" -p "$PORT" -U postgres -D "$R/data" -R -X stream -c fast
# cluster_start rewrites pgcluster.conf (port, socket directory) on start; -R wrote
# standby.signal and primary_conninfo (host=$P port=$PORT) into postgresql.auto.conf.
cluster_start "$R" "$PORT2"
expect_eq "the replica is in recovery" "$(sql "$R" "$PORT2" postgres "SELECT pg_is_in_recovery()")" t

sql "$P" "$PORT" postgres "CREATE DATABASE standby" >/dev/null
sql "$P" "$PORT" standby "CREATE EXTENSION idempotency" >/dev/null
# The lapsing claim keeps its lease here (1 hour): the comparisons below must not race a clock.
write_records "$P" "$PORT" standby sb "" '1 hour'
wait_replayed

# Every key but the expiring one, whose state changes a second after it was written.
KEYS="(VALUES ('completed', '{\"amount\": \"10.00\", \"currency\": \"EUR\"}'::jsonb),
         ('failed-retryable', '{\"amount\": \"20.00\"}'), ('failed-final', '{\"amount\": \"31.00\"}'),
         ('held', '{\"amount\": \"40.00\"}'), ('lapsing', '{\"amount\": \"50.00\"}'),
         ('absent', NULL)) v(k, cmd)"
CHECK="SELECT k, c.* FROM $KEYS, idem_check('sb', v.k, v.cmd) c ORDER BY k"
on_primary=$(sql "$P" "$PORT" standby "$CHECK")
on_replica=$(sql "$R" "$PORT2" standby "$CHECK")
expect_eq "idem_check on the replica answers the primary's rows" "$on_replica" "$on_primary"
expect_eq "idem_check on the replica, exactly" \
  "$(sql "$R" "$PORT2" standby "SELECT k, state, matches, attempt, recovery_point, http_status, response, resource,
       created_at IS NOT NULL, expires_at > now(), lease_expires_at > now()
     FROM $KEYS, idem_check('sb', v.k, v.cmd) ORDER BY k")" \
'absent|absent|||||||f||
completed|completed|t|1||201|{"id": 981, "note": "naïve ✓"}|payments/981|t|t|
failed-final|failed|f|1||402|{"code": "card_declined"}||t|t|
failed-retryable|failed|t|1||503|{"code": "psp_timeout"}||t|t|
held|in_progress|t|1|reserved||||t|t|t
lapsing|in_progress|t|1|charged||||t|t|t'
# Expired records count as none on a standby too.
wait_true "$R" "$PORT2" standby 10 "the expired key reads absent on the replica" \
  "SELECT state = 'absent' FROM idem_check('sb', 'expired')"

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
log "on the replica: $msg"

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
wait_replayed
expect_eq "the completion on the primary reads on the replica" \
  "$(sql "$R" "$PORT2" standby "SELECT state, http_status, resource, recovery_point FROM idem_check('sb', 'held')")" \
  'completed|201|payments/983|'

# Logical decoding sees the writes of the store's direct path (heap_insert and heap_update log
# them as the executor's INSERT and UPDATE do): a claim and its completion, in order.
sql "$P" "$PORT" standby "SELECT 1 FROM pg_create_logical_replication_slot('idem_decoding', 'test_decoding')" >/dev/null
sql "$P" "$PORT" standby "SELECT outcome FROM idem_begin('sb', 'decoded', '{\"amount\": 1}')" >/dev/null
sql "$P" "$PORT" standby "SELECT idem_complete('sb', 'decoded', resource => 'payments/1', http_status => 201)" >/dev/null
changes=$(sql "$P" "$PORT" standby "SELECT string_agg(substring(data from '^table idempotency.records: ([A-Z]+):'), ',' ORDER BY lsn)
  FROM pg_logical_slot_get_changes('idem_decoding', NULL, NULL)
  WHERE data LIKE 'table idempotency.records:%key[text]:''decoded''%'")
sql "$P" "$PORT" standby "SELECT pg_drop_replication_slot('idem_decoding')" >/dev/null
expect_eq "logical decoding sees the claim and its completion" "$changes" "INSERT,UPDATE"
log "passed"
