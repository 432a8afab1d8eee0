#!/usr/bin/env bash
# The upgrade test (`make test-upgrade`): for every kept release in sql/releases (its SQL
# exactly as it was installed then), on a scratch cluster:
#   1. CREATE EXTENSION idempotency VERSION '<old>' with the kept SQL and the CURRENT library,
#      which is the state a package upgrade leaves before anyone runs ALTER EXTENSION;
#   2. writes records of every state (tests/fixtures/records.sql): completed, failed retryable,
#      failed final, in progress with a checkpoint (one with a long lease, one whose lease runs
#      out), one that expires;
#   3. with the old SQL still in place, a new key executes, completes and replays, and
#      idem_check answers the old SQL's ten columns (the library serves each version's SQL);
#   4. ALTER EXTENSION idempotency UPDATE, then checks: the version is the crate's; every
#      record reads the same (idem_check) and replays the same (idem_begin); a different
#      command is IK001 on each; the retryable failure re-executes as attempt 2; the held key
#      is in_progress; the lapsing one is taken over after its lease with its recovery point
#      and its old holder is fenced (IK003); the expired key is new again; new keys,
#      idem_purge and idem_forget work; idem_check has 0.4.0's eleven columns, the last the
#      stored fingerprint;
#   5. compares a catalog dump of the extension's objects (tests/upgrade/catalog.sql) between
#      the upgraded database and a fresh CREATE EXTENSION of the current version: a migration
#      that forgets something shows as a diff.
#
#   scripts/upgrade-test.sh    (PG_BINDIR: the PostgreSQL to test, default the system 15;
#                               cluster build/upgrade, TEST_DIR / TEST_PORT move it)
#
# The extension must be installed into that PostgreSQL with this checkout's SQL (`make
# install`, which also copies sql/releases/*): the script checks that first.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_installed
CURRENT=$(crate_version)
[ -n "$CURRENT" ] || die "no version in Cargo.toml"

scratch upgrade
cluster_up "$DIR" "$PORT"
H=$DIR
q() { sql "$H" "$PORT" "$1" "$2"; }

# The fresh database: the current version created directly.
q postgres "DROP DATABASE IF EXISTS fresh"
q postgres "CREATE DATABASE fresh"
q fresh "CREATE EXTENSION idempotency"
expect_eq "a fresh CREATE EXTENSION installs the crate's version" \
  "$(q fresh "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")" "$CURRENT"
psql_at "$H" "$PORT" fresh -At -f "$ROOT/tests/upgrade/catalog.sql" >"$DIR/catalog-fresh.txt"

q postgres "DO \$\$ BEGIN CREATE ROLE upgrade_app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$"

releases=0
for kept in "$ROOT"/sql/releases/idempotency--*.sql; do
  OLD=$(basename "$kept" .sql)
  OLD=${OLD#idempotency--}
  [ "$OLD" != "$CURRENT" ] || continue
  releases=$((releases + 1))
  DB=upgrade_from_${OLD//./_}
  log "from $OLD to $CURRENT in database $DB"
  q postgres "DROP DATABASE IF EXISTS $DB"
  q postgres "CREATE DATABASE $DB"
  q "$DB" "CREATE EXTENSION idempotency VERSION '$OLD'"
  expect_eq "installed at $OLD" \
    "$(q "$DB" "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")" "$OLD"

  # Every function of the old SQL runs against the current library (CREATE FUNCTION has
  # already checked that each C symbol it names exists).
  expect_eq "$OLD's idem_canonical and idem_fingerprint on the current library" \
    "$(q "$DB" "SELECT idem_canonical('{\"b\": 1, \"a\": 2.0}'), encode(idem_fingerprint('{}'), 'hex')")" \
    '{"a":2,"b":1}|44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a'
  expect_eq "$OLD's idem_purge on the current library" "$(q "$DB" "SELECT idem_purge()")" 0
  expect_eq "$OLD's idem_forget on the current library" \
    "$(q "$DB" "SET ROLE upgrade_app; SELECT idem_forget('up', 'no-such-key')")" f

  # Records of every state, written by the old SQL, owned by a plain role.
  write_records "$H" "$PORT" "$DB" up upgrade_app '2 seconds'

  keys="completed:{\"amount\": \"10.00\", \"currency\": \"EUR\"}
failed-retryable:{\"amount\": \"20.00\"}
failed-final:{\"amount\": \"30.00\"}
held:{\"amount\": \"40.00\"}
lapsing:{\"amount\": \"50.00\"}"
  # The columns every version's idem_check has (0.4.0 adds fingerprint at the end).
  check_all() {
    local k c out=
    while IFS=: read -r k c; do
      out+="$(q "$DB" "SET ROLE upgrade_app; SELECT state, matches, attempt, recovery_point, http_status, response,
                         resource, created_at, expires_at, lease_expires_at FROM idem_check('up', '$k', '$c')")"$'\n'
    done <<<"$keys"
    printf '%s' "$out"
  }
  # How many columns idem_check returns.
  check_columns() {
    q "$DB" "SELECT count(*) FROM idem_check('up', 'completed') c, json_each(row_to_json(c))"
  }
  replays() {
    q "$DB" "SET ROLE upgrade_app;
      SELECT * FROM idem_begin('up', 'completed', '{\"currency\": \"EUR\", \"amount\": \"10.00\"}');
      SELECT * FROM idem_begin('up', 'failed-final', '{\"amount\": \"30.00\"}')"
  }
  before_check=$(check_all)
  before_replay=$(replays)
  # The stored values, exactly (state|matches|attempt|recovery_point|http_status|response|resource).
  expect_eq "records as written by $OLD" \
    "$(q "$DB" "SELECT key, state, matches, attempt, recovery_point, http_status, response, resource
                FROM (VALUES ('completed'), ('failed-retryable'), ('failed-final'), ('held'), ('lapsing')) k(key),
                     idem_check('up', k.key) ORDER BY key")" \
"completed|completed||1||201|{\"id\": 981, \"note\": \"naïve ✓\"}|payments/981
failed-final|failed||1||402|{\"code\": \"card_declined\"}|
failed-retryable|failed||1||503|{\"code\": \"psp_timeout\"}|
held|in_progress||1|reserved|||
lapsing|in_progress||1|charged|||"

  # The old SQL on the current library, before the update: a new key executes, completes and
  # replays; idem_check answers the old SQL's ten columns.
  expect_eq "$OLD's idem_check has its ten columns on the current library" "$(check_columns)" 10
  expect_eq "$OLD's idem_begin of a new key on the current library" \
    "$(q "$DB" "SET ROLE upgrade_app; SELECT outcome, state, attempt, http_status, encode(fingerprint, 'hex') FROM idem_begin('up', 'before-update', '{}')")" \
    'execute|in_progress|1||44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a'
  q "$DB" "SET ROLE upgrade_app; SELECT idem_complete('up', 'before-update', '{\"id\": 7}', 'r/7', 201)" >/dev/null
  expect_eq "$OLD's idem_begin replays it on the current library" \
    "$(q "$DB" "SET ROLE upgrade_app; SELECT outcome, state, attempt, http_status, response, resource FROM idem_begin('up', 'before-update', '{}')")" \
    'replay|completed|1|201|{"id": 7}|r/7'
  expect_eq "$OLD's idem_check reads it on the current library" \
    "$(q "$DB" "SET ROLE upgrade_app; SELECT state, matches, attempt, recovery_point, http_status, response, resource FROM idem_check('up', 'before-update', '{}')")" \
    'completed|t|1||201|{"id": 7}|r/7'

  q "$DB" "ALTER EXTENSION idempotency UPDATE"
  expect_eq "pg_extension says $CURRENT after the update" \
    "$(q "$DB" "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")" "$CURRENT"
  dx=$(psql_at "$H" "$PORT" "$DB" -c '\dx idempotency')
  grep -Eq "^ idempotency \| $CURRENT " <<<"$dx" || die "\\dx does not show $CURRENT: $dx"

  expect_eq "idem_check reads every record as before the update" "$(check_all)" "$before_check"
  expect_eq "idem_begin replays as before the update" "$(replays)" "$before_replay"
  # 0.4.0's idem_check: eleven columns, the last the stored fingerprint (NULL when absent).
  expect_eq "idem_check has eleven columns after the update" "$(check_columns)" 11
  expect_eq "idem_check's fingerprint is the stored one after the update" \
    "$(q "$DB" "SET ROLE upgrade_app; SELECT key, state, encode(fingerprint, 'hex')
                FROM (VALUES ('before-update'), ('completed'), ('failed-final'), ('no-such-key')) k(key),
                     idem_check('up', k.key) ORDER BY key")" \
"before-update|completed|44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a
completed|completed|863a218a6e44c499bfe7aa2415486dd8288ce68c6d521d34856d6938aaaac5c0
failed-final|failed|dc4e2a124b1b11abf4c0997f8ea6029ce9b285ef67c843736e79415a7c5ec0a5
no-such-key|absent|"
  expect_error "$H" "$PORT" "$DB" 42501 \
    "SET ROLE pg_monitor; SELECT * FROM idem_check('up', 'completed')"

  check_records "$H" "$PORT" "$DB" up upgrade_app
  # The retried failure completes as attempt 2; the lapsed claim's old holder is fenced off.
  q "$DB" "SET ROLE upgrade_app; SELECT idem_complete('up', 'failed-retryable', '{\"id\": 982}', http_status => 201, attempt => 2)" >/dev/null
  expect_eq "and then replays its new outcome" \
    "$(q "$DB" "SET ROLE upgrade_app; SELECT outcome, attempt, http_status, response FROM idem_begin('up', 'failed-retryable', '{\"amount\": \"20.00\"}')")" \
    'replay|2|201|{"id": 982}'

  expect_error "$H" "$PORT" "$DB" IK003 \
    "SET ROLE upgrade_app; SELECT idem_complete('up', 'lapsing', attempt => 1)"

  # The upgraded table takes new keys, purges and evictions.
  # (one statement with output per psql -c: before 15, psql shows only the last result)
  expect_eq "a new key after the update" \
    "$(q "$DB" "SET ROLE upgrade_app; SELECT outcome, attempt FROM idem_begin('up', 'new', '{}')")" \
    'execute|1'
  q "$DB" "SET ROLE upgrade_app; SELECT idem_complete('up', 'new', resource => 'r/1')" >/dev/null
  expect_eq "the new key replays" \
    "$(q "$DB" "SET ROLE upgrade_app; SELECT outcome, resource FROM idem_begin('up', 'new', '{}')")" \
    'replay|r/1'
  expect_eq "idem_forget after the update" "$(q "$DB" "SET ROLE upgrade_app; SELECT idem_forget('up', 'new')")" t
  expect_eq "idem_purge after the update (nothing expired)" "$(q "$DB" "SELECT idem_purge()")" 0

  psql_at "$H" "$PORT" "$DB" -At -f "$ROOT/tests/upgrade/catalog.sql" >"$DIR/catalog-$DB.txt"
  if ! diff -u "$DIR/catalog-fresh.txt" "$DIR/catalog-$DB.txt" >"$DIR/catalog-$DB.diff"; then
    cat "$DIR/catalog-$DB.diff" >&2
    die "the objects after ALTER EXTENSION UPDATE from $OLD differ from a fresh CREATE EXTENSION of $CURRENT (- fresh, + upgraded; the upgrade script misses or changes something)"
  fi
  log "from $OLD: records kept and replayed, catalog equal to a fresh $CURRENT ($(wc -l <"$DIR/catalog-fresh.txt") lines compared)"
done

[ "$releases" -gt 0 ] || die "no kept release older than $CURRENT in sql/releases"
log "passed ($releases release(s) upgraded to $CURRENT)"
