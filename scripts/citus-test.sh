#!/usr/bin/env bash
# The Citus test (`make test-citus CITUS_PG_CONFIG=/path/to/pg_config`, docs/scale-out.md):
# a coordinator and two workers on 127.0.0.1, `idem_distribute()`, then over real connections:
#   1. the set-up and its refusals (no Citus, a worker, a tenant id of another type); the
#      upgrade from the previous release with the records distributed;
#   2. the contract through the coordinator: execute, replay, in_progress, IK001, IK002, IK003,
#      42501, 22023, 22004; one transaction with the effect on the same node (no two-phase
#      commit); phases with a takeover and fencing; idem_check; idem_forget;
#   3. where the key's lock is: on the node that holds the shard, whichever node the client
#      called (coordinator, that worker, the other worker); in_progress at once with wait 0,
#      the replay after a wait; a call that Citus cannot delegate is refused (0A000);
#   4. idem_purge shard by shard: bounded batches, a row locked by a live claim skipped without
#      waiting, from the coordinator and from a worker; idempotency.purge_local per node;
#   5. the torture load (tests/torture) through the coordinator, then spread over all three
#      nodes: 32 connections, 20,000 requests each, the checker finds 0 anomalies;
#   6. kill -9 of a worker (all its processes) under the load through the coordinator, a
#      restart with crash recovery, and the checker: nothing acknowledged lost, no double
#      effect, every in-doubt commit all or nothing, no claim stuck.
#
# It builds and installs nothing: Citus and this extension must already be installed in the
# PostgreSQL of CITUS_PG_CONFIG (Citus from its own packages, 11.0 or later; tested with
# 13.2.2 on PostgreSQL 15; the extension with `make install PG_CONFIG=$CITUS_PG_CONFIG`).
# Without CITUS_PG_CONFIG it prints SKIPPED, writes SKIPPED to build/citus/status and exits 0
# (the status file says what ran: PASSED, FAILED or SKIPPED).
#
#   CITUS_PG_CONFIG  pg_config of that PostgreSQL
#   CITUS_PORT       the coordinator's port (default: scripts/lib.sh port_of citus, 54380 with
#                    the default TEST_PORT_BASE); the workers use the next two
#   CITUS_REQUESTS   requests of each torture run (default 20000); CITUS_CONNECTIONS (32)
set -euo pipefail

NAME=test-citus
[ -z "${CITUS_PG_CONFIG:-}" ] || PG_BINDIR=$("$CITUS_PG_CONFIG" --bindir)
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
BASE=$ROOT/build/citus
STATUS=$BASE/status
mkdir -p "$BASE"
step() { printf '%s: %s\n' "$NAME" "$*"; }

if [ -z "${CITUS_PG_CONFIG:-}" ]; then
  echo SKIPPED >"$STATUS"
  echo "test-citus: SKIPPED: CITUS_PG_CONFIG is not set. This suite needs a PostgreSQL with Citus" \
       "(11.0 or later, from Citus's packages) and this extension installed; run" \
       "make test-citus CITUS_PG_CONFIG=/path/to/bin/pg_config (docs/scale-out.md)."
  exit 0
fi
echo FAILED >"$STATUS"
[ -f "$("$CITUS_PG_CONFIG" --sharedir)/extension/citus.control" ] \
  || die "Citus is not installed in $("$CITUS_PG_CONFIG" --sharedir)/extension (install Citus from its packages first)"
require_installed

P0=${CITUS_PORT:-$(port_of citus)}
P1=$((P0 + 1))
P2=$((P0 + 2))
REQUESTS=${CITUS_REQUESTS:-20000}
CONNECTIONS=${CITUS_CONNECTIONS:-32}
H=127.0.0.1
DB=idem
NODES=("$BASE/coordinator" "$BASE/worker1" "$BASE/worker2")
PORTS=("$P0" "$P1" "$P2")
T0=$(date +%s)

# shellcheck source=citus-cluster.sh
. "$ROOT/scripts/citus-cluster.sh"
stop_all() { citus_cluster_stop "$BASE"; }
trap 'kill $(jobs -p) 2>/dev/null || true; close_sessions; stop_all' EXIT

# --- interactive sessions (a psql reading from a fifo), for what must stay open -------------
declare -A SESS_FD=() SESS_OUT=() SESS_PID=()
session_open() { # NAME PORT
  local name=$1 port=$2 fifo=$BASE/session-$1.fifo
  rm -f "$fifo" && mkfifo "$fifo"
  SESS_OUT[$name]=$BASE/session-$name.out
  : >"${SESS_OUT[$name]}"
  "$PG_BINDIR/psql" -X -q -At -F '|' -v VERBOSITY=verbose -h $H -p "$port" -U postgres -d $DB \
    <"$fifo" >"${SESS_OUT[$name]}" 2>&1 &
  SESS_PID[$name]=$!
  exec {fd}>"$fifo"
  SESS_FD[$name]=$fd
}
# Sends SQL (no wait); session_wait collects everything the session printed since.
session_send() { printf '%s\n' "$2" >&"${SESS_FD[$1]}"; }
session_wait() { # NAME: waits until the session has run everything sent, prints its output
  local name=$1 mark i
  # Unique without a counter (this may run in a subshell); the output file is only appended
  # to (psql keeps it open), and a call's output is what follows the previous mark.
  mark="--mark-$(date +%s%N)-$RANDOM--"
  printf '\\echo %s\n' "$mark" >&"${SESS_FD[$name]}"
  for i in $(seq 1 600); do
    grep -qx -- "$mark" "${SESS_OUT[$name]}" && break
    sleep 0.05
  done
  grep -qx -- "$mark" "${SESS_OUT[$name]}" || die "session $name did not answer within 30 s"
  awk -v m="$mark" '$0 == m { printf "%s", buf; exit }
                    /^--mark-[0-9]+-[0-9]+--$/ { buf = ""; next }
                    { buf = buf $0 "\n" }' "${SESS_OUT[$name]}"
}
session_run() { session_send "$1" "$2"; session_wait "$1"; }
close_sessions() {
  local n fd
  # All ends first: a session started later inherited the earlier sessions' fifo ends.
  for n in "${!SESS_FD[@]}"; do
    fd=${SESS_FD[$n]}
    exec {fd}>&-
  done
  for n in "${!SESS_FD[@]}"; do wait "${SESS_PID[$n]}" 2>/dev/null || true; done
  SESS_FD=()
}

q() { sql $H "$1" $DB "$2"; }          # PORT SQL
# PORT < script: runs a psql script (stopping at its first error, which fails the test); its
# output is then in $OUT.
qs() {
  if ! OUT=$(psql_at $H "$1" $DB -At -F '|' 2>&1); then
    printf '%s\n' "$OUT" >&2
    die "the psql script above failed on port $1"
  fi
}
qdb() { sql $H "$1" "$2" "$3"; }       # PORT DB SQL
# PORT SQLSTATE SQL [REGEX]: SQL fails with exactly that SQLSTATE, and REGEX matches its
# message, DETAIL or HINT.
err() {
  local out first
  if out=$(psql_at $H "$1" $DB -At -v VERBOSITY=verbose -c "$3" 2>&1); then
    die "expected SQLSTATE $2, but it succeeded: $3 (output: $out)"
  fi
  first=$(grep -m1 '^ERROR:' <<<"$out" || true)
  case "$first" in
    "ERROR:  $2: "*) ;;
    *) die "expected SQLSTATE $2 from: $3; got: $out" ;;
  esac
  if [ -n "${4:-}" ] && ! grep -Eq -- "$4" <<<"$out"; then
    die "SQLSTATE $2 as expected, but '$out' does not match /$4/"
  fi
}
# The node (port) that holds the shard of a scope.
port_of() {
  q "$P0" "SELECT n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid)
           WHERE p.shardid = get_shard_id_for_distribution_column('idempotency.records', '$1')"
}
other_worker() { if [ "$1" = "$P1" ]; then echo "$P2"; else echo "$P1"; fi; }
key_locks() { # PORT: the idempotency key locks held on that node
  q "$1" "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 7655 AND granted"
}
two_pc() { q "$P0" "SELECT count(*) FROM pg_dist_transaction"; }

# --- 1. the cluster and the set-up ---------------------------------------------------------
step "a coordinator and two workers on $H:$P0, $P1, $P2 ($PG_BINDIR, $(
  "$PG_BINDIR/postgres" --version))"
citus_cluster_start "$BASE" "$P0" $DB
CITUS=$(q "$P0" "SELECT extversion FROM pg_extension WHERE extname = 'citus'")
step "Citus $CITUS: $(q "$P0" "SELECT citus_version()")"
expect_eq "two workers with their metadata synced" \
  "$(q "$P0" "SELECT count(*) FROM pg_dist_node WHERE groupid <> 0 AND hasmetadata AND metadatasynced")" 2

# Refusals, each changing nothing: a database without Citus, a worker.
qdb "$P0" postgres "CREATE DATABASE plain" >/dev/null
qdb "$P0" plain "CREATE EXTENSION idempotency" >/dev/null
expect_error $H "$P0" plain 55000 "SELECT idem_distribute()" "Citus is not installed in this database"
expect_error $H "$P0" plain 55000 "SELECT idempotency.purge_local()" "Citus is not installed"
# CREATE EXTENSION on the coordinator: Citus creates it on the workers too.
q "$P0" "CREATE EXTENSION idempotency" >/dev/null
expect_eq "the extension on every node, at this version" \
  "$(q "$P0" "SELECT string_agg(result, ',' ORDER BY nodeid) FROM run_command_on_all_nodes(
                \$\$SELECT extversion FROM pg_extension WHERE extname = 'idempotency'\$\$)")" \
  "$(crate_version),$(crate_version),$(crate_version)"
err "$P1" 55000 "SELECT idem_distribute()" "must run on the Citus coordinator"
expect_error $H "$P0" $DB 42501 "SET ROLE pg_monitor; SELECT idem_distribute()" "permission denied"
# Without the library loaded before a session's first query, a NULL scope would crash the
# node that plans it (Citus): refused until it is (here per database, without a restart).
err "$P0" 55000 "SELECT idem_distribute()" \
  "the idempotency library is not preloaded on Citus nodes 127.0.0.1:$P0, 127.0.0.1:$P1, 127.0.0.1:$P2"
for p in "$P0" "$P1" "$P2"; do
  q "$p" "SET citus.enable_ddl_propagation = off; ALTER DATABASE $DB SET session_preload_libraries = 'idempotency'" >/dev/null
done

# The business tables: payments distributed by a text COLLATE "C" tenant column holding the
# scope; invoices by a bigint tenant id, which cannot be co-located with the records.
q "$P0" "CREATE TABLE payments (tenant text COLLATE \"C\" NOT NULL, id bigserial, amount numeric NOT NULL,
                                 PRIMARY KEY (tenant, id));
         SELECT create_distributed_table('payments', 'tenant');
         CREATE TABLE invoices (tenant_id bigint NOT NULL, id bigserial, PRIMARY KEY (tenant_id, id));
         SELECT create_distributed_table('invoices', 'tenant_id');
         CREATE TABLE notes (tenant text NOT NULL, body text);
         SELECT create_distributed_table('notes', 'tenant', colocate_with => 'none');
         CREATE TABLE local_only (id int)" >/dev/null
err "$P0" 42804 "SELECT idem_distribute('invoices')" \
  'public.invoices is distributed by column tenant_id of type bigint; the records are distributed by scope, of type text COLLATE "C"'
err "$P0" 42804 "SELECT idem_distribute('notes')" 'notes is distributed by column tenant of type text COLLATE "default"'
err "$P0" 22023 "SELECT idem_distribute('local_only')" "local_only is not a hash-distributed table"
err "$P0" 22023 "SELECT idem_distribute('payments', 8)" "shard_count cannot be given with colocate_with"
expect_eq "nothing distributed by the refusals" \
  "$(q "$P0" "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = 'idempotency.records'::regclass")" 0

expect_eq "idem_distribute('payments')" "$(q "$P0" "SELECT idem_distribute('payments')")" \
  "idempotency.records distributed by scope in 32 shards, co-located with public.payments; 6 functions delegated by scope"
expect_eq "the records share the payments' co-location group" \
  "$(q "$P0" "SELECT count(DISTINCT colocationid) FROM pg_dist_partition
              WHERE logicalrelid IN ('idempotency.records'::regclass, 'payments'::regclass)")" 1
expect_eq "the six functions delegated by scope with force_delegation" \
  "$(q "$P0" "SELECT string_agg(p.proname || ':' || o.distribution_argument_index || ':' || o.force_delegation, ',' ORDER BY p.proname)
              FROM pg_dist_object o JOIN pg_proc p ON p.oid = o.objid
              WHERE o.classid = 'pg_proc'::regclass AND p.proname LIKE 'idem_%'")" \
  "idem_begin:0:true,idem_check:0:true,idem_checkpoint:0:true,idem_complete:0:true,idem_fail:0:true,idem_forget:0:true"
expect_eq "idem_distribute() again only distributes the functions again" \
  "$(q "$P0" "SELECT idem_distribute('payments')")" \
  "idempotency.records distributed by scope in 32 shards, co-located with public.payments; 6 functions delegated by scope"

# Roles exist on every node (Citus propagates CREATE ROLE); each may use payments.
q "$P0" "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
         GRANT ALL ON payments TO alice, bob; GRANT USAGE ON SEQUENCE payments_id_seq TO alice, bob" >/dev/null

# Two scopes on different workers.
SA=tenant:1
for n in $(seq 2 40); do
  SB=tenant:$n
  [ "$(port_of "$SB")" != "$(port_of "$SA")" ] && break
done
PA=$(port_of "$SA")
PB=$(port_of "$SB")
[ "$PA" != "$PB" ] || die "no two tenants on different workers"
step "scope $SA lives on $PA, $SB on $PB"

# The upgrade on Citus: records of every state written by the previous release, the table
# distributed by hand (as the earlier README's recipe did), ALTER EXTENSION UPDATE on the
# coordinator, idem_distribute(), and the records behave as written (scripts/lib.sh).
OLD=$(ls "$ROOT"/sql/releases/ | sed -n 's/^idempotency--\(.*\)\.sql$/\1/p' | sort -V | tail -n1)
for p in "$P0" "$P1" "$P2"; do
  qdb "$p" postgres "CREATE DATABASE upgrade" >/dev/null
  qdb "$p" upgrade "CREATE EXTENSION citus" >/dev/null
  qdb "$p" upgrade "ALTER DATABASE upgrade SET session_preload_libraries = 'idempotency'" >/dev/null
done
qdb "$P0" upgrade "SELECT citus_set_coordinator_host('$H', $P0)" >/dev/null
qdb "$P0" upgrade "SELECT citus_add_node('$H', $P1)" >/dev/null
qdb "$P0" upgrade "SELECT citus_add_node('$H', $P2)" >/dev/null
qdb "$P0" upgrade "CREATE EXTENSION idempotency VERSION '$OLD'" >/dev/null
write_records $H "$P0" upgrade up "" '2 seconds'
qdb "$P0" upgrade "SELECT create_distributed_table('idempotency.records', 'scope')" >/dev/null
qdb "$P0" upgrade "SELECT truncate_local_data_after_distributing_table('idempotency.records')" >/dev/null
qdb "$P0" upgrade "ALTER EXTENSION idempotency UPDATE" >/dev/null
expect_eq "ALTER EXTENSION UPDATE from $OLD reached every node" \
  "$(qdb "$P0" upgrade "SELECT string_agg(result, ',' ORDER BY nodeid) FROM run_command_on_all_nodes(
                \$\$SELECT extversion FROM pg_extension WHERE extname = 'idempotency'\$\$)")" \
  "$(crate_version),$(crate_version),$(crate_version)"
expect_eq "idem_distribute() on records distributed by hand" "$(qdb "$P0" upgrade "SELECT idem_distribute()")" \
  "idempotency.records distributed by scope in 32 shards; 6 functions delegated by scope"
check_records $H "$P0" upgrade up ""
step "upgrade from $OLD on Citus: records kept, replayed, taken over"

# --- 2. the contract through the coordinator ---------------------------------------------------
C='{"amount": "10.00", "currency": "EUR"}'
before=$(two_pc)
qs "$P0" <<SQL
BEGIN;
SELECT outcome, state, attempt, http_status FROM idem_begin('$SA', 'k-1', '$C');
INSERT INTO payments (tenant, amount) VALUES ('$SA', 10.00) RETURNING id AS pid \gset
SELECT idem_complete('$SA', 'k-1', resource => 'payments/' || :'pid', http_status => 201) \g /dev/null
COMMIT;
SQL
expect_eq "one transaction through the coordinator: execute, the effect on the same node, complete" \
  "$OUT" "execute|in_progress|1|"
expect_eq "no two-phase commit for a co-located transaction" "$(two_pc)" "$before"
RESOURCE=$(q "$P0" "SELECT 'payments/' || id FROM payments WHERE tenant = '$SA'")
expect_eq "replay (another key order) through the coordinator" \
  "$(q "$P0" "SELECT outcome, state, attempt, http_status, resource FROM idem_begin('$SA', 'k-1', '{\"currency\": \"EUR\", \"amount\": \"10.00\"}')")" \
  "replay|completed|1|201|$RESOURCE"
expect_eq "replay through each worker" \
  "$(q "$P1" "SELECT outcome, resource FROM idem_begin('$SA', 'k-1', '$C')")|$(q "$P2" "SELECT outcome, resource FROM idem_begin('$SA', 'k-1', '$C')")" \
  "replay|$RESOURCE|replay|$RESOURCE"
err "$P0" IK001 "SELECT * FROM idem_begin('$SA', 'k-1', '{\"amount\": \"100.00\", \"currency\": \"EUR\"}')" \
  'idempotency key "k-1" was already used with a different command'
err "$P2" IK001 "SELECT * FROM idem_begin('$SA', 'k-1', '{\"amount\": \"100.00\"}')" "already used with a different command"
err "$P0" IK002 "SELECT idem_complete('$SA', 'no-such-key')" 'idempotency key "no-such-key" is not in progress'
err "$P0" IK002 "SELECT idem_complete('$SA', 'k-1')" "is not in progress"
err "$P0" 22004 "SELECT * FROM idem_begin('$SA', NULL, '{}')" 'argument "key" of idem_begin must not be null'
# A NULL scope in the forms Citus delegates: 22004 from the extension's planner hook, before
# Citus would hash it (and crash the node); as a literal, a folded expression, a bound
# parameter, a named argument; and the forms the planner reduces to those (a WHERE true, a
# sub-select, an empty FROM sub-select; through the coordinator, a view and an inlined SQL
# function), which crashed a node while the hook looked at the query before planning; through
# the coordinator and a worker.
qs "$P0" >/dev/null <<'SQL'
CREATE VIEW public.null_scope_view AS SELECT * FROM idem_begin(NULL, 'k', '{}');
CREATE FUNCTION public.null_scope_wrap(s text) RETURNS void
  LANGUAGE sql AS $$ SELECT idem_complete(s, 'k') $$;
SQL
err "$P0" 22004 "SELECT * FROM public.null_scope_view" 'argument "scope" of idem_begin must not be null'
err "$P0" 22004 "SELECT public.null_scope_wrap(NULL)" 'argument "scope" of idem_complete must not be null'
for p in "$P0" "$P1"; do
  err "$p" 22004 "SELECT * FROM idem_begin(NULL, 'k', '{}') WHERE true" 'argument "scope" of idem_begin must not be null'
  err "$p" 22004 "SELECT * FROM (SELECT * FROM idem_begin(NULL, 'k', '{}')) s" 'argument "scope" of idem_begin must not be null'
  err "$p" 22004 "SELECT idem_complete(NULL, 'k') FROM (SELECT) s" 'argument "scope" of idem_complete must not be null'
  err "$p" 22004 "SELECT * FROM idem_begin(NULL, 'k', '{}')" 'argument "scope" of idem_begin must not be null'
  err "$p" 22004 "SELECT idem_complete(NULL, 'k')" 'argument "scope" of idem_complete must not be null'
  err "$p" 22004 "SELECT * FROM idem_begin(lower(NULL), 'k', '{}')" 'argument "scope" of idem_begin must not be null'
  err "$p" 22004 "SELECT * FROM idem_check(key => 'k', scope => NULL)" 'argument "scope" of idem_check must not be null'
  err "$p" 22004 "PREPARE n(text) AS SELECT outcome FROM idem_begin(\$1, 'k', '{}'); EXECUTE n(NULL)" \
    'argument "scope" of idem_begin must not be null'
  err "$p" 22004 "BEGIN; SELECT idem_fail(NULL::text, 'k')" 'argument "scope" of idem_fail must not be null'
done
err "$P0" 22023 "SELECT * FROM idem_begin('$SA', '', '{}')" "invalid key for idem_begin"
err "$P0" 22023 "SELECT * FROM idem_begin('$SA', 'k-2', '{}', ttl => '0')" "ttl"
err "$P0" 22023 "BEGIN; SELECT outcome FROM idem_begin('$SA', 'k-2', '{}'); SELECT idem_complete('$SA', 'k-2', http_status => 99)" "http_status"
expect_eq "the rolled-back claim left nothing" "$(q "$P0" "SELECT state FROM idem_check('$SA', 'k-2')")" absent

# A failure, retryable then final.
qs "$P0" <<SQL
BEGIN; SELECT outcome FROM idem_begin('$SB', 'f-1', '{}'); SELECT idem_fail('$SB', 'f-1', '{"code": "timeout"}', true, 503); COMMIT;
SQL
expect_eq "a retryable failure re-executes with attempt 2" \
  "$(q "$P0" "SELECT outcome, attempt FROM idem_begin('$SB', 'f-1', '{}')")" "execute|2"
expect_eq "in_progress with wait 0 while the retry's claim is committed and its lease holds" \
  "$(q "$P0" "SELECT outcome, state, attempt, http_status FROM idem_begin('$SB', 'f-1', '{}', wait => '0')")" \
  "in_progress|in_progress|2|409"
q "$P0" "SELECT idem_fail('$SB', 'f-1', '{\"code\": \"declined\"}', false, 402, attempt => 2)" >/dev/null
expect_eq "a final failure replays" \
  "$(q "$P0" "SELECT outcome, state, attempt, http_status, response FROM idem_begin('$SB', 'f-1', '{}')")" \
  'replay|failed|2|402|{"code": "declined"}'

# Phases: a claim with a short lease, a checkpoint, the holder "dies", a takeover, fencing.
expect_eq "phased claim through a worker that does not hold the shard" \
  "$(q "$(other_worker "$PB")" "SELECT outcome, attempt FROM idem_begin('$SB', 'p-1', '$C', lease => '1 second')")" "execute|1"
q "$P0" "SELECT idem_checkpoint('$SB', 'p-1', 'charged', '{\"charge_id\": \"ch_1\"}', attempt => 1)" >/dev/null
expect_eq "still held: in_progress" \
  "$(q "$P0" "SELECT outcome, attempt, http_status FROM idem_begin('$SB', 'p-1', '$C')")" "in_progress|1|409"
for _ in $(seq 1 100); do
  [ "$(q "$P0" "SELECT clock_timestamp() > lease_expires_at FROM idem_check('$SB', 'p-1')")" = t ] && break
  sleep 0.1
done
expect_eq "the lapsed claim is taken over with its recovery point" \
  "$(q "$P0" "SELECT outcome, state, attempt, recovery_point, recovery_data FROM idem_begin('$SB', 'p-1', '$C')")" \
  'execute|in_progress|2|charged|{"charge_id": "ch_1"}'
err "$P0" IK003 "SELECT idem_complete('$SB', 'p-1', resource => 'late', attempt => 1)" \
  'lease on idempotency key "p-1" was lost'
err "$PB" IK003 "SELECT idem_checkpoint('$SB', 'p-1', 'late', attempt => 1)" "was lost"
qs "$P0" <<SQL
BEGIN;
INSERT INTO payments (tenant, amount) VALUES ('$SB', 10.00) RETURNING id AS pid \gset
SELECT idem_complete('$SB', 'p-1', resource => 'payments/' || :'pid', http_status => 201, attempt => 2) \g /dev/null
COMMIT;
SELECT state, attempt, recovery_point, http_status FROM idem_check('$SB', 'p-1', '$C');
SQL
expect_eq "the new holder completes" "$OUT" "completed|2||201"
expect_eq "idem_check reports the match through each node" \
  "$(for p in "$P0" "$P1" "$P2"; do q "$p" "SELECT state || ':' || matches FROM idem_check('$SB', 'p-1', '$C')"; done | paste -sd,)" \
  "completed:true,completed:true,completed:true"
expect_eq "idem_check inside a transaction block" \
  "$(psql_at $H "$P0" $DB -At -c "BEGIN" -c "SELECT state FROM idem_check('$SB', 'p-1')" -c "SELECT state FROM idem_check('$SA', 'k-1')" -c "COMMIT")" \
  "completed
completed"

# Ownership between roles.
qs "$P0" <<SQL
SET ROLE alice;
BEGIN; SELECT outcome FROM idem_begin('$SA', 'a-1', '{}'); SELECT idem_complete('$SA', 'a-1', resource => 'r/a'); COMMIT;
SQL
expect_eq "alice's replay" "$(q "$P0" "SET ROLE alice; SELECT outcome, resource FROM idem_begin('$SA', 'a-1', '{}')")" "replay|r/a"
err "$P0" 42501 "SET ROLE bob; SELECT * FROM idem_begin('$SA', 'a-1', '{}')" 'permission denied for idempotency key "a-1"'
err "$P0" 42501 "SET ROLE bob; SELECT * FROM idem_check('$SA', 'a-1')" "permission denied"
err "$(other_worker "$PA")" 42501 "SET ROLE bob; SELECT * FROM idem_begin('$SA', 'a-1', '{}')" "permission denied"
err "$PA" 42501 "SET ROLE bob; SELECT idem_forget('$SA', 'a-1')" "permission denied"
expect_eq "the record's owner is alice on the shard's node" \
  "$(q "$PA" "SELECT owner::text FROM idempotency.records WHERE scope = '$SA' AND key = 'a-1'")" alice
expect_eq "idem_forget by its owner" "$(q "$P0" "SET ROLE alice; SELECT idem_forget('$SA', 'a-1')")" t
expect_eq "forgotten" "$(q "$P0" "SELECT state FROM idem_check('$SA', 'a-1')")" absent

# A transaction whose effect is in a table of another co-location group commits on two nodes.
before=$(two_pc)
qs "$P0" <<SQL
BEGIN;
SELECT outcome FROM idem_begin('$SA', 'k-2pc', '{}');
INSERT INTO invoices (tenant_id) VALUES (7), (8), (9), (10);
SELECT idem_complete('$SA', 'k-2pc', resource => 'invoices');
COMMIT;
SQL
[ "$(two_pc)" -gt "$before" ] || die "a transaction that wrote the records and invoices on several nodes did not use two-phase commit"
expect_eq "and it committed" "$(q "$P0" "SELECT state FROM idem_check('$SA', 'k-2pc')")" completed
step "contract through the coordinator: passed"

# --- 3. where the key's lock is ------------------------------------------------------------------
session_open holder "$P0"
session_run holder "BEGIN;" >/dev/null
expect_eq "the holder executes through the coordinator, in a transaction block" \
  "$(session_run holder "SELECT outcome FROM idem_begin('$SA', 'lock-1', '$C');")" execute
expect_eq "its key lock is on the shard's node only (coordinator, $PA, $(other_worker "$PA"))" \
  "$(key_locks "$P0"),$(key_locks "$PA"),$(key_locks "$(other_worker "$PA")")" "0,1,0"
for p in "$P0" "$PA" "$(other_worker "$PA")"; do
  expect_eq "a concurrent request through $p: in_progress at once with wait 0 (claim not committed: no attempt)" \
    "$(q "$p" "SELECT outcome, state, attempt, http_status FROM idem_begin('$SA', 'lock-1', '$C', wait => '0')")" \
    "in_progress|in_progress||409"
done
session_open waiter "$(other_worker "$PA")"
session_send waiter "SELECT outcome, attempt, resource FROM idem_begin('$SA', 'lock-1', '$C', wait => '20 s');"
sleep 0.5
session_run holder "INSERT INTO payments (tenant, amount) VALUES ('$SA', 1) RETURNING id AS pid \\gset
SELECT idem_complete('$SA', 'lock-1', resource => 'payments/' || :'pid', http_status => 201); COMMIT;" >/dev/null
LOCK_RES=$(q "$P0" "SELECT resource FROM idem_check('$SA', 'lock-1')")
expect_eq "the waiter through the other worker gets the replay once the holder commits" \
  "$(session_wait waiter)" "replay|1|$LOCK_RES"

# A call in a form Citus cannot delegate would take the lock on the wrong node: refused.
for p in "$P0" "$(other_worker "$PA")"; do
  err "$p" 0A000 "SELECT (idem_begin('$SA', 'lock-2', '{}')).outcome" \
    "idem_begin\\(\\) ran on a node that does not hold the shard of scope \"$SA\""
  err "$p" 0A000 "SELECT b.outcome FROM idem_begin('$SA', 'lock-2', '{}') b WHERE b.outcome IS NOT NULL" \
    "does not hold the shard"
  err "$p" 0A000 "WITH c AS (SELECT * FROM idem_begin('$SA', 'lock-2', '{}')) SELECT outcome FROM c" \
    "does not hold the shard"
  err "$p" 0A000 "SELECT idem_complete('$SA', 'lock-2'), 1" "does not hold the shard"
done
expect_eq "the same form on the shard's own node runs there" \
  "$(q "$PA" "SELECT (idem_begin('$SA', 'lock-2', '{}')).outcome")" execute
expect_eq "a delegated call sees that claim" \
  "$(q "$P0" "SELECT outcome, attempt FROM idem_begin('$SA', 'lock-2', '{}')")" "in_progress|1"
step "key lock on the shard's node: passed"

# --- 4. purging shard by shard -------------------------------------------------------------------
# 12 expired records in 12 scopes (both workers), one of them locked by a live claim.
stmts=
for n in $(seq 1 12); do stmts+="SELECT outcome FROM idem_begin('purge:$n', 'k', '{}', ttl => '1 ms');"; done
psql_at $H "$P0" $DB -At -c "$stmts" >/dev/null
expect_eq "the expired records are on both workers" \
  "$(q "$P0" "SELECT count(DISTINCT n.nodeport) FROM generate_series(1, 12) i, pg_dist_placement p JOIN pg_dist_node n USING (groupid)
              WHERE p.shardid = get_shard_id_for_distribution_column('idempotency.records', 'purge:' || i)")" 2
sleep 0.1
session_run holder "BEGIN;" >/dev/null
expect_eq "a live claim reuses the expired row of purge:1 (and holds its row lock)" \
  "$(session_run holder "SELECT outcome FROM idem_begin('purge:1', 'k', '{}');")" execute
expect_eq "idem_purge(5): a full batch" "$(q "$P0" "SET statement_timeout = '20s'; SELECT idem_purge(5)")" 5
expect_eq "idem_purge(5) again" "$(q "$P0" "SET statement_timeout = '20s'; SELECT idem_purge(5)")" 5
expect_eq "idem_purge(5): the last expired one, skipping the locked row without waiting" \
  "$(q "$P0" "SET statement_timeout = '20s'; SELECT idem_purge(5)")" 1
expect_eq "nothing more to purge" "$(q "$P0" "SELECT idem_purge()")" 0
session_run holder "COMMIT;" >/dev/null
expect_eq "the claim on the reused row survived the purges" \
  "$(q "$P0" "SELECT state FROM idem_check('purge:1', 'k')")" in_progress
# From a worker, by a role without privileges on the records; and per node.
stmts=
for n in $(seq 13 24); do stmts+="SELECT outcome FROM idem_begin('purge:$n', 'k', '{}', ttl => '1 ms');"; done
psql_at $H "$P0" $DB -At -c "$stmts" >/dev/null
sleep 0.1
expect_eq "idem_purge() through a worker, as bob" "$(q "$P2" "SET ROLE bob; SELECT idem_purge()")" 12
stmts=
for n in $(seq 25 36); do stmts+="SELECT outcome FROM idem_begin('purge:$n', 'k', '{}', ttl => '1 ms');"; done
psql_at $H "$P0" $DB -At -c "$stmts" >/dev/null
sleep 0.1
w1=$(q "$P1" "SELECT idempotency.purge_local(100)")
w2=$(q "$P2" "SELECT idempotency.purge_local(100)")
expect_eq "idempotency.purge_local on each node purges its own shards (coordinator: none)" \
  "$(q "$P0" "SELECT idempotency.purge_local(100)"),$((w1 + w2))" "0,12"
[ "$w1" -gt 0 ] && [ "$w2" -gt 0 ] || die "purge_local: $w1 on worker 1, $w2 on worker 2: expected both > 0"
SHARD=$(q "$P0" "SELECT get_shard_id_for_distribution_column('idempotency.records', '$SA')")
err "$(other_worker "$PA")" 22023 "SELECT idempotency.purge_shard($SHARD)" "shard $SHARD of idempotency.records is not placed on this node"
expect_eq "idempotency.purge_shard on the shard's node" "$(q "$PA" "SELECT idempotency.purge_shard($SHARD, 10)")" 0
err "$P0" 42501 "SET ROLE bob; SELECT idempotency.purge_local()" "permission denied"
err "$P0" 22023 "SELECT idem_purge(0)" "invalid max_rows"
step "purge: passed"
close_sessions

# --- 5. torture through the coordinator, then through every node ------------------------------
(cd "$ROOT" && cargo build -q -p idempotency-torture)
BIN=$ROOT/target/debug/idempotency-torture
torture() { "$BIN" load --host $H --dbname $DB --citus yes --scopes 16 --keys 16 \
  --connections "$CONNECTIONS" --requests "$REQUESTS" "$@"; }
t=$(date +%s)
torture --port "$P0" || die "torture through the coordinator"
step "torture through the coordinator: passed in $(( $(date +%s) - t )) s"
t=$(date +%s)
torture --port "$P0,$P1,$P2" --seed 2 || die "torture through all three nodes"
step "torture through the coordinator and both workers: passed in $(( $(date +%s) - t )) s"

# --- 6. kill -9 of a worker under load --------------------------------------------------------
VICTIM=${NODES[1]}
pm=$(head -n1 "$VICTIM/data/postmaster.pid")
t=$(date +%s)
torture --port "$P0" --seed 3 --node-failures yes >"$BASE/crash-load.log" 2>&1 &
load=$!
sleep 4
kill -0 "$load" 2>/dev/null || { cat "$BASE/crash-load.log"; die "the load ended before the kill"; }
procs=$(pgrep -P "$pm" | tr '\n' ' ')
kill -9 "$pm" $procs
step "kill -9 of worker 1 (postmaster $pm and its $(wc -w <<<"$procs") processes) under load"
for _ in $(seq 1 150); do
  alive=0
  for p in $pm $procs; do
    if [ -e "/proc/$p" ] && ! grep -q '^State:.*Z' "/proc/$p/status" 2>/dev/null; then alive=1; fi
  done
  [ $alive = 0 ] && break
  sleep 0.1
done
# A dead postmaster not yet reaped keeps its pid alive for pg_ctl: its lock file goes, as an
# operator would remove it once no process of it is left.
rm -f "$VICTIM/data/postmaster.pid"
sleep 2
PGCLUSTER_SETTINGS=$(citus_settings) cluster_start "$VICTIM" "$P1"
grep -q "database system was interrupted\|not properly shut down" "$VICTIM/server.log" \
  || die "worker 1 did not run crash recovery"
step "worker 1 restarted and recovered"
rc=0
wait "$load" || rc=$?
cat "$BASE/crash-load.log"
[ $rc = 0 ] || die "torture with a worker killed: exit $rc"
q "$P0" "SELECT recover_prepared_transactions()" >/dev/null
expect_eq "no prepared transaction left on any node" \
  "$(q "$P0" "SELECT string_agg(result, ',') FROM run_command_on_all_nodes('SELECT count(*) FROM pg_prepared_xacts')")" "0,0,0"
step "kill -9 of a worker under load: passed in $(( $(date +%s) - t )) s"

! grep -n "terminated by signal" "$BASE"/*/server.log \
  || die "a server process crashed (see the lines above)"
echo PASSED >"$STATUS"
step "passed in $(( $(date +%s) - T0 )) s"
