#!/usr/bin/env bash
# The dump and restore test (`make test-dump`), on a scratch cluster (build/dump, PORT):
#   1. a database with the extension and records of every state (completed, failed retryable,
#      failed final, in progress with a checkpoint: one held, one whose lease runs out, and an
#      expired one), owned by two roles;
#   2. pg_dump -Fc | pg_restore into a new database, and pg_dump (plain SQL) | psql into another;
#   3. in each copy: every row of idempotency.records equals the source's, column by column
#      (owner by role name); the records replay exactly as in the source, a different command
#      is IK001, another role is 42501, the retryable failure re-executes as attempt 2, the
#      held claim is in_progress, the lapsed one is taken over with its recovery point;
#   4. a restore where one of the records' roles does not exist fails, naming the role;
#   5. a dropped role's records (DROP ROLE leaves them with the bare oid) stay out of every
#      dump, by the superuser or by a non-superuser allowed to read the table, so that neither
#      a new role of the same name nor a role that has the same oid in a fresh cluster (given
#      it with pg_resetwal -o) gets them in a restore.
# Restoring into another cluster needs the records' roles there first (owner is regrole: the
# dump names the role, and a missing role fails the restore of the table's data).
#
#   scripts/dump-test.sh       (PG_BINDIR: the PostgreSQL to test, default the system 15;
#                               cluster build/dump, TEST_DIR / TEST_PORT move it)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_installed
scratch dump
cluster_up "$DIR" "$PORT"
H=$DIR
q() { sql "$H" "$PORT" "$1" "$2"; }

for db in dump_source dump_custom dump_plain; do
  q postgres "DROP DATABASE IF EXISTS $db"
done
q postgres "DO \$\$ BEGIN CREATE ROLE dump_app; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
            DO \$\$ BEGIN CREATE ROLE dump_other; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$"
q postgres "CREATE DATABASE dump_source"
q dump_source "CREATE EXTENSION idempotency"
write_records "$H" "$PORT" dump_source d dump_app '1 second'
q dump_source "SET ROLE dump_other;
               SELECT outcome FROM idem_begin('d', 'other-role', '{\"amount\": \"70.00\"}');
               SELECT idem_complete('d', 'other-role', resource => 'payments/70', http_status => 201)" >/dev/null

ROWS="SELECT * FROM idempotency.records ORDER BY scope, key"
source_rows=$(q dump_source "$ROWS")
expect_eq "seven records in the source" "$(q dump_source "SELECT count(*) FROM idempotency.records")" 7

"$PG_BINDIR/pg_dump" -h "$H" -p "$PORT" -U postgres -Fc -f "$DIR/source.dump" dump_source
"$PG_BINDIR/pg_dump" -h "$H" -p "$PORT" -U postgres -Fp -f "$DIR/source.sql" dump_source
grep -q '^CREATE EXTENSION IF NOT EXISTS idempotency WITH SCHEMA public;' "$DIR/source.sql" \
  || die "the plain dump does not create the extension"
grep -q '^COPY idempotency.records (' "$DIR/source.sql" \
  || die "the plain dump does not hold the records (pg_extension_config_dump)"

q postgres "CREATE DATABASE dump_custom"
"$PG_BINDIR/pg_restore" -h "$H" -p "$PORT" -U postgres -d dump_custom --exit-on-error "$DIR/source.dump"
q postgres "CREATE DATABASE dump_plain"
psql_at "$H" "$PORT" dump_plain -f "$DIR/source.sql" >/dev/null

# Wait until the lapsing claim's lease (1 s) and the expired key's ttl (1 s) have run out,
# so that the source and both copies are compared in the same state.
wait_true "$H" "$PORT" dump_source 10 "the 1-second lease and ttl ran out" \
  "SELECT clock_timestamp() > l.lease_expires_at AND e.state = 'absent'
     FROM idem_check('d', 'lapsing') l, idem_check('d', 'expired') e"

replay() {
  q "$1" "SET ROLE dump_app;
    SELECT * FROM idem_begin('d', 'completed', '{\"currency\": \"EUR\", \"amount\": \"10.00\"}');
    SELECT * FROM idem_begin('d', 'failed-final', '{\"amount\": \"30.00\"}');
    SELECT * FROM idem_check('d', 'held', '{\"amount\": \"40.00\"}');
    SELECT * FROM idem_check('d', 'expired')"
}
source_replay=$(replay dump_source)

for db in dump_custom dump_plain; do
  log "checking $db"
  expect_eq "$db: every record, column by column" "$(q "$db" "$ROWS")" "$source_rows"
  expect_eq "$db: owners are the same roles" \
    "$(q "$db" "SELECT key, owner FROM idempotency.records ORDER BY key")" \
"completed|dump_app
expired|dump_app
failed-final|dump_app
failed-retryable|dump_app
held|dump_app
lapsing|dump_app
other-role|dump_other"
  expect_eq "$db: registered for the next dump too" \
    "$(q "$db" "SELECT extconfig::regclass[]::text FROM pg_extension WHERE extname = 'idempotency'")" \
    '{idempotency.records}'
  expect_eq "$db: replays and reads as the source" "$(replay "$db")" "$source_replay"
  expect_error "$H" "$PORT" "$db" 42501 \
    "SET ROLE dump_other; SELECT * FROM idem_begin('d', 'completed', '{\"amount\": \"10.00\", \"currency\": \"EUR\"}')"
  expect_error "$H" "$PORT" "$db" 42501 "SET ROLE dump_app; SELECT * FROM idem_check('d', 'other-role')"
  expect_eq "$db: the other role's record replays for it" \
    "$(q "$db" "SET ROLE dump_other; SELECT outcome, http_status, resource FROM idem_begin('d', 'other-role', '{\"amount\": \"70.00\"}')")" \
    'replay|201|payments/70'
  check_records "$H" "$PORT" "$db" d dump_app
done
# owner is regrole: the dump names the role, so a cluster without it cannot take the records.
# Renaming the role makes this cluster one without "dump_other" for the moment.
q postgres "DROP DATABASE IF EXISTS dump_no_role"
q postgres "CREATE DATABASE dump_no_role"
q postgres "ALTER ROLE dump_other RENAME TO dump_other_renamed"
rc=0
out=$("$PG_BINDIR/pg_restore" -h "$H" -p "$PORT" -U postgres -d dump_no_role --exit-on-error \
  "$DIR/source.dump" 2>&1) || rc=$?
q postgres "ALTER ROLE dump_other_renamed RENAME TO dump_other"
[ $rc -ne 0 ] || die "a restore without the records' role succeeded"
grep -q 'role "dump_other" does not exist' <<<"$out" \
  || die "a restore without the records' role failed otherwise: $out"
expect_eq "no record was loaded without the role" \
  "$(q dump_no_role "SELECT count(*) FROM idempotency.records")" 0
log "a restore into a cluster without the role fails: $(grep -m1 'does not exist' <<<"$out")"


# A dropped role's records. DROP ROLE succeeds while the role owns records (owner is a regrole,
# which records no dependency) and leaves them with the bare oid, which no role matches. A
# dump must leave them out: written as a number, a restore would hand them, responses
# included, to whichever role has that oid there. Checked with a restore into this cluster,
# where a new role bears the dropped role's name, and into a fresh cluster where another role
# was given the dropped role's oid (pg_resetwal -o sets the next oid); and with a plain dump
# by a non-superuser allowed to read the table, since the dump's filter runs as whoever dumps.
for db in dump_dropped dump_dropped_custom dump_dropped_plain; do
  q postgres "DROP DATABASE IF EXISTS $db"
done
q postgres "DROP ROLE IF EXISTS dump_gone; DROP ROLE IF EXISTS dump_reader; CREATE ROLE dump_gone; CREATE ROLE dump_reader LOGIN"
q postgres "CREATE DATABASE dump_dropped"
q dump_dropped "CREATE EXTENSION idempotency"
q dump_dropped "SET ROLE dump_app;
                SELECT outcome FROM idem_begin('g', 'kept', '{\"amount\": \"1.00\"}');
                SELECT idem_complete('g', 'kept', resource => 'payments/1', http_status => 201);
                SET ROLE dump_gone;
                SELECT outcome FROM idem_begin('g', 'gone', '{\"amount\": \"2.00\"}');
                SELECT idem_complete('g', 'gone', response => '{\"card\": \"4111 1111 1111 1111\"}',
                                     resource => 'payments/2', http_status => 201)" >/dev/null
gone_oid=$(q postgres "SELECT oid FROM pg_roles WHERE rolname = 'dump_gone'")
q postgres "DROP ROLE dump_gone"
expect_eq "the dropped role's record stays behind with its bare oid" \
  "$(q dump_dropped "SELECT key, owner::text FROM idempotency.records ORDER BY key")" \
  "gone|$gone_oid
kept|dump_app"
expect_error "$H" "$PORT" dump_dropped 42501 "SET ROLE dump_app; SELECT * FROM idem_check('g', 'gone')"
"$PG_BINDIR/pg_dump" -h "$H" -p "$PORT" -U postgres -Fc -f "$DIR/dropped.dump" dump_dropped
"$PG_BINDIR/pg_dump" -h "$H" -p "$PORT" -U postgres -Fp -f "$DIR/dropped.sql" dump_dropped
q dump_dropped "GRANT USAGE ON SCHEMA idempotency TO dump_reader; GRANT SELECT ON idempotency.records TO dump_reader"
"$PG_BINDIR/pg_dump" -h "$H" -p "$PORT" -U dump_reader -Fp -f "$DIR/dropped-reader.sql" dump_dropped
q dump_dropped "REVOKE ALL ON idempotency.records FROM dump_reader; REVOKE ALL ON SCHEMA idempotency FROM dump_reader"
# the COPY block of the records: one line per record, up to its terminator
copied() { sed -n '/^COPY idempotency.records (/,/^\\\.$/p' "$1" | sed '1d;$d'; }
for f in dropped.sql dropped-reader.sql; do
  expect_eq "$f: the records in the dump are those of existing roles" \
    "$(copied "$DIR/$f" | grep -c .)" 1
  copied "$DIR/$f" | grep -q 'payments/1' || die "$f: the existing role's record is not in the dump"
  ! grep -q -e 'payments/2' -e '4111 1111 1111 1111' -e "	$gone_oid	" "$DIR/$f" \
    || die "$f: the dropped role's record is in the dump"
done

# this cluster, with a new role of the dropped role's name (another oid)
q postgres "CREATE ROLE dump_gone"
q postgres "CREATE DATABASE dump_dropped_custom"
"$PG_BINDIR/pg_restore" -h "$H" -p "$PORT" -U postgres -d dump_dropped_custom --exit-on-error "$DIR/dropped.dump"
q postgres "CREATE DATABASE dump_dropped_plain"
psql_at "$H" "$PORT" dump_dropped_plain -f "$DIR/dropped.sql" >/dev/null
for db in dump_dropped_custom dump_dropped_plain; do
  expect_eq "$db: only the existing role's record was restored" \
    "$(q "$db" "SELECT key, owner FROM idempotency.records ORDER BY key")" 'kept|dump_app'
  expect_eq "$db: the new role of the same name finds no record" \
    "$(q "$db" "SET ROLE dump_gone; SELECT state FROM idem_check('g', 'gone')")" 'absent'
  expect_eq "$db: the existing role's record replays" \
    "$(q "$db" "SET ROLE dump_app; SELECT outcome, http_status, resource FROM idem_begin('g', 'kept', '{\"amount\": \"1.00\"}')")" \
    'replay|201|payments/1'
done
q postgres "DROP ROLE dump_gone"

# a fresh cluster where another role holds the dropped role's oid: its socket in a directory
# of its own, so the same port number does not collide
FRESH=$DIR/fresh
cluster_fresh "$FRESH" "$PORT"
cluster_stop "$FRESH"
as_owner "$PG_BINDIR/pg_resetwal" -o "$gone_oid" "$FRESH/data" >/dev/null
cluster_start "$FRESH" "$PORT"
sql "$FRESH" "$PORT" postgres "CREATE ROLE dump_heir" >/dev/null
expect_eq "the fresh cluster's new role has the dropped role's oid" \
  "$(sql "$FRESH" "$PORT" postgres "SELECT oid FROM pg_roles WHERE rolname = 'dump_heir'")" "$gone_oid"
sql "$FRESH" "$PORT" postgres "CREATE ROLE dump_app" >/dev/null
sql "$FRESH" "$PORT" postgres "CREATE DATABASE dump_dropped" >/dev/null
"$PG_BINDIR/pg_restore" -h "$FRESH" -p "$PORT" -U postgres -d dump_dropped --exit-on-error "$DIR/dropped.dump"
expect_eq "fresh cluster: only the existing role's record was restored" \
  "$(sql "$FRESH" "$PORT" dump_dropped "SELECT key, owner FROM idempotency.records ORDER BY key")" 'kept|dump_app'
expect_eq "fresh cluster: the role with the dropped role's oid finds no record" \
  "$(sql "$FRESH" "$PORT" dump_dropped "SET ROLE dump_heir; SELECT state FROM idem_check('g', 'gone')")" 'absent'
cluster_stop "$FRESH"
log "a dropped role's records stay out of the dump: not restored to a new role of its name, nor to the role that has its oid in a fresh cluster"

log "passed (custom-format and plain dumps, $(wc -l <<<"$source_rows") records each)"
