#!/usr/bin/env bash
# The operations suite (`make test-ops-worker`): what needs the library in
# shared_preload_libraries, several connections, a restart, a crash, a standby or SIGHUP, on a
# scratch primary (build/ops/primary, PORT) and a streaming replica of it (PORT+1):
#   1. settings placed where PostgreSQL does not check them (ALTER ROLE ... SET and ALTER
#      SYSTEM from a session without the library, a hand-edited configuration file, on
#      start and on SIGHUP) are kept and refused by the calls that need them, never replaced by
#      the default; with the library loaded ALTER SYSTEM and ALTER ROLE refuse invalid values;
#   2. the counters: tests/ops/sql/stats.sql (pg_regress, exact expected output), every outcome
#      and refusal counted exactly, reset zeroes them; the takeover's LOG line;
#   3. the purge worker: purges expired records and nothing else; skips a row locked by a live
#      claim without waiting for it; a SIGHUP changes its interval (and an invalid interval
#      stops it with a WARNING); a database created after start is purged, a dropped one
#      forgotten (its counter slot reused); more databases than idempotency.max_databases
#      count into the shared row; SIGTERM ends a purge worker and the launcher, which comes
#      back; it gives way to CREATE DATABASE ... TEMPLATE and DROP DATABASE of a database it
#      is purging (both succeed mid-backlog), and DROP DATABASE never waits for the launcher;
#      it comes back after kill -9 of itself (crash restart) and of the postmaster; it
#      does nothing on a hot standby and starts at promotion;
#   4. the purge worker under the torture load (tests/torture): 0 anomalies, and exactly the
#      expired records it was given are purged;
#   5. the Prometheus queries file (contrib/prometheus/queries.yaml) runs, and its columns are
#      its metrics.
#
#   scripts/ops-test.sh         (PG_BINDIR: the PostgreSQL, default the system 15; the primary
#                               listens on port_of ops (scripts/lib.sh), the replica on the next
#                               port; TEST_PORT and TEST_DIR override, as the matrix does)
#
# The extension must be installed into that PostgreSQL (`make install`). Waits for the worker
# poll with a bound (60 s) and fail when it passes; nothing asserts a duration.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
scratch ops
P=$DIR/primary
R=$DIR/replica
PORT2=$((PORT + 1))
require_installed
T0=$(date +%s)

fail() { die "$*"; }
step() { log "$*"; }
stop_all() {
  [ -z "${INSERTER:-}" ] || kill "$INSERTER" 2>/dev/null || true
  cluster_stop "$R" 2>/dev/null || true
  cluster_stop "$P" 2>/dev/null || true
}
stop_all
rm -rf "$DIR"
mkdir -p "$P" "$R"
on_exit stop_all

q() { sql "$P" "$PORT" "$1" "$2"; }
qr() { sql "$R" "$PORT2" "$1" "$2"; }
start() { cluster_start "$P" "$PORT" 2>/dev/null; }
stop() { cluster_stop "$P" 2>/dev/null; }

# wait_for WHAT CMD WANT: polls CMD (every 0.2 s, at most 60 s) until it prints WANT.
wait_for() {
  local what=$1 cmd=$2 want=$3 got= i
  for i in $(seq 1 300); do
    got=$(eval "$cmd" 2>/dev/null || true)
    [ "$got" = "$want" ] && return 0
    sleep 0.2
  done
  printf '%s: waited 60 s for: %s\n--- last: %s\n--- want: %s\n' "$NAME" "$what" "$got" "$want" >&2
  tail -n 30 "$P/server.log" >&2
  fail "$what"
}
# The server log from a mark on: log_mark, then log_wait REGEX (polls, at most 60 s).
log_mark() { MARK=$(wc -l <"$P/server.log"); }
# (log_since is read whole before grep: with pipefail, a grep -q that stops early would fail
# the pipeline.)
log_since() { tail -n +"$((MARK + 1))" "$P/server.log"; }
log_has() { local since; since=$(log_since); grep -Eq -- "$1" <<<"$since"; }
log_wait() {
  local i
  for i in $(seq 1 300); do
    log_has "$1" && return 0
    sleep 0.2
  done
  tail -n 30 "$P/server.log" >&2
  fail "no line /$1/ in the server log within 60 s"
}
# The primary's ops.conf (included by postgresql.conf): written whole, then reloaded.
opsconf() {
  printf '%s\n' "# written by scripts/ops-test.sh" "$@" | as_owner tee "$P/data/ops.conf" >/dev/null
}
reload() { q postgres "SELECT pg_reload_conf()" >/dev/null; }
launcher_pid() { q postgres "SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity WHERE backend_type = 'idempotency purge launcher'"; }
# Counters, read in w1 (any database with the extension reads every database's row).
stat() { q w1 "SELECT coalesce((SELECT $2 FROM idem_stats() WHERE datname IS NOT DISTINCT FROM $1), 0)"; }
expired() { q "$1" "SELECT count(*) FROM idempotency.records WHERE scope = 'exp'"; }
# add_expired DB N [PREFIX]: N expired records in scope 'exp'.
add_expired() {
  q "$1" "INSERT INTO idempotency.records (created_at, expires_at, lease, owner, attempt, state, scope, key, fingerprint)
          SELECT now() - interval '2 days', now() - interval '1 day', 1, 'postgres', 1, 'c', 'exp',
                 '${3:-e}-' || i || '-' || md5(random()::text), sha256(i::text::bytea)
          FROM generate_series(1, $2) i" >/dev/null
}
newdb() { q postgres "CREATE DATABASE $1" >/dev/null; q "$1" "CREATE EXTENSION idempotency" >/dev/null; }

# --- 1. settings PostgreSQL does not check --------------------------------------------------
step "settings placed before the library is loaded (server not preloaded)"
start
q postgres "CREATE ROLE ops_app LOGIN" >/dev/null
newdb settings
q settings "GRANT CREATE ON SCHEMA public TO ops_app" >/dev/null
# A session without the library: PostgreSQL stores these unchecked. (Before 17, ALTER SYSTEM
# accepts a custom name only once the session has a placeholder for it: the SET makes one.)
psql_at "$P" "$PORT" postgres -At -c "SET idempotency.ttl = '1'" -c "SET idempotency.wait = '1'" \
  -c "ALTER SYSTEM SET idempotency.ttl = '2 hours'" -c "ALTER SYSTEM SET idempotency.wait = 'soon'" \
  -c "ALTER ROLE ops_app SET idempotency.lease = 'a while'" >/dev/null
reload
wait_for "the reload reached new sessions" "q settings 'SHOW idempotency.wait'" soon
expect_error "$P" "$PORT" settings 22023 "SELECT outcome FROM idem_begin('s', 'k', '{}')" \
  'invalid value for parameter "idempotency.wait": "soon"'
out=$(psql_at "$P" "$PORT" settings -At -c "SELECT outcome FROM idem_begin('s', 'k', '{}')" 2>&1 || true)
grep -q "It was set in the configuration file (postgresql.conf or ALTER SYSTEM)" <<<"$out" \
  || fail "the refusal does not say where the value was set: $out"
q settings "SELECT outcome FROM idem_begin('s', 'k1', '{}', wait => '0')" >/dev/null
expect_eq "the valid unchecked ttl is used (not preloaded)" \
  "$(q settings "SELECT expires_at - created_at FROM idem_check('s', 'k1')")" "02:00:00"

step "the same values with the library preloaded, and what is refused once it is loaded"
stop
echo "include_if_exists = 'ops.conf'" | as_owner tee -a "$P/data/postgresql.conf" >/dev/null
BASE_CONF=("shared_preload_libraries = 'idempotency'" "max_prepared_transactions = 10"
  "idempotency.max_databases = 3" "log_min_messages = 'warning'")
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = '1s'"
start
log_mark
expect_eq "the launcher runs" "$(launcher_pid | grep -c .)" 1
expect_error "$P" "$PORT" settings 22023 "SELECT outcome FROM idem_begin('s', 'k2', '{}')" \
  'invalid value for parameter "idempotency.wait": "soon"'
out=$(psql_at "$P" "$PORT" settings -U ops_app -At -c "SELECT outcome FROM idem_begin('s', 'k2', '{}', wait => '0')" 2>&1 || true)
grep -q 'invalid value for parameter "idempotency.lease": "a while"' <<<"$out" && grep -q "It was set by ALTER ROLE ... SET" <<<"$out" \
  || fail "the role's unchecked lease is not refused as such: $out"
q settings "SELECT outcome FROM idem_begin('s', 'k3', '{}', wait => '0')" >/dev/null
expect_eq "the valid unchecked ttl is used (preloaded)" \
  "$(q settings "SELECT expires_at - created_at FROM idem_check('s', 'k3')")" "02:00:00"
# Now every session has the library: ALTER SYSTEM and ALTER ROLE check their values.
expect_error "$P" "$PORT" postgres 22023 "ALTER SYSTEM SET idempotency.wait = 'later'" \
  'invalid value for parameter "idempotency.wait": "later"'
expect_error "$P" "$PORT" postgres 22023 "ALTER ROLE ops_app SET idempotency.lease = 'a moment'" \
  'invalid value for parameter "idempotency.lease": "a moment"'
q postgres "ALTER SYSTEM SET idempotency.wait = '100ms'" >/dev/null
q postgres "ALTER ROLE ops_app SET idempotency.lease = '90 s'" >/dev/null
reload
wait_for "ALTER SYSTEM + reload reached new sessions" "q settings 'SHOW idempotency.wait'" 100ms
expect_eq "the role's lease, by ALTER ROLE" \
  "$(psql_at "$P" "$PORT" settings -U ops_app -At -c "SELECT outcome FROM idem_begin('s', 'k4', '{}')" \
     -c "SELECT lease_expires_at - created_at FROM idem_check('s', 'k4')")" "execute
00:01:30"
# A hand-edited configuration file (ALTER SYSTEM would refuse): read on SIGHUP by a session
# that has the library loaded, and by new sessions.
q postgres "ALTER SYSTEM RESET idempotency.ttl" >/dev/null
out=$(psql_at "$P" "$PORT" settings -At <<SQL 2>&1 || true
SELECT idem_canonical('{}');
\\! printf '%s\\n' "# written by scripts/ops-test.sh" "${BASE_CONF[0]}" "${BASE_CONF[1]}" "${BASE_CONF[2]}" "${BASE_CONF[3]}" "idempotency.purge_interval = '1s'" "idempotency.ttl = 'fortnight'" | $( [ "$(id -u)" -eq 0 ] && echo "sudo -u postgres" ) tee "$P/data/ops.conf" >/dev/null
SELECT pg_reload_conf();
$(for _ in $(seq 1 20); do echo "SELECT pg_sleep(0.1);"; done)
SHOW idempotency.ttl;
SELECT outcome FROM idem_begin('s', 'k5', '{}', wait => '0');
SQL
)
grep -q '^fortnight$' <<<"$out" || fail "the reloaded session does not show the file's ttl: $out"
grep -q 'invalid value for parameter "idempotency.ttl": "fortnight"' <<<"$out" \
  || fail "the reloaded session did not refuse the file's invalid ttl: $out"
expect_error "$P" "$PORT" settings 22023 "SELECT outcome FROM idem_begin('s', 'k6', '{}', wait => '0')" \
  'invalid value for parameter "idempotency.ttl": "fortnight"'
# ... and at server start.
stop; start
expect_error "$P" "$PORT" settings 22023 "SELECT outcome FROM idem_begin('s', 'k7', '{}', wait => '0')" \
  'invalid value for parameter "idempotency.ttl": "fortnight"'
# An invalid purge_interval stops the worker with a WARNING, never falls back to 1 minute.
log_mark
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = 'often'"
reload
log_wait 'WARNING:  idempotency purge launcher reloaded: not purging: invalid value for parameter "idempotency.purge_interval": "often"'
q postgres "ALTER SYSTEM RESET ALL" >/dev/null
q postgres "ALTER ROLE ops_app RESET ALL" >/dev/null
log_mark
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = '1s'"
reload
log_wait 'idempotency purge launcher reloaded: purging every 1 s in batches of 10000'

# --- 2. the counters ------------------------------------------------------------------------
step "counters: tests/ops/sql/stats.sql with the worker off"
log_mark
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = 0"
reload
log_wait 'idempotency purge launcher reloaded: purging is off'
REGRESS=$(dirname "$("$PG_BINDIR/pg_config" --pgxs)")/../test/regress/pg_regress
mkdir -p "$DIR/regress"
rc=0
"$REGRESS" --bindir="$PG_BINDIR" --host="$P" --port="$PORT" --user=postgres \
  --dbname=ops_stats --load-extension=idempotency --inputdir="$ROOT/tests/ops" \
  --outputdir="$DIR/regress" stats || rc=$?
if [ $rc -ne 0 ]; then cat "$DIR/regress/regression.diffs" >&2 || true; fail "tests/ops/sql/stats.sql"; fi
fp1=$(q ops_stats "SELECT encode(idem_fingerprint('{\"amount\": 1}'), 'hex')")
fp2=$(q ops_stats "SELECT encode(idem_fingerprint('{\"amount\": 2}'), 'hex')")
since=$(log_since)
grep -A1 'LOG:  idempotency key "new" was reused with a different command' <<<"$since" \
  | grep -c "DETAIL:  Scope \"st\", key \"new\": stored command fingerprint $fp1, this request's $fp2." >/dev/null \
  || fail "no IK001 LOG line with both fingerprints"
log_has 'LOG:  idempotency key "lapse" was taken over at attempt 2' \
  || fail "no takeover LOG line for key \"lapse\""
grep -A1 'idempotency key "lapse" was taken over' <<<"$since" | grep -c 'DETAIL:  Scope "st", key "lapse": the lease of attempt 1 ran out at ' >/dev/null \
  || fail "the takeover LOG line has no DETAIL with the lapsed lease"

# --- 3. the purge worker --------------------------------------------------------------------
step "the worker purges expired records, and only those"
log_mark
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = '1s'"
reload
log_wait 'purging every 1 s'
newdb w1
q w1 "SELECT b.outcome FROM generate_series(1, 3) i, idem_begin('live', 'k' || i, '{}') b" >/dev/null
add_expired w1 2500
wait_for "the 2,500 expired records of w1 purged" "expired w1" 0
expect_eq "live records untouched" "$(q w1 "SELECT count(*) FROM idempotency.records WHERE scope = 'live'")" 3
expect_eq "w1's purged_rows" "$(stat "'w1'" purged_rows)" 2500
expect_eq "w1's last purge is recorded" "$(q w1 "SELECT last_purge > now() - interval '1 minute' AND purge_runs > 0 FROM idem_stats() WHERE datname = 'w1'")" t

step "the worker skips a row locked by a live claim, without waiting for it"
add_expired w1 2 x
add_expired w1 1 locked
key=$(q w1 "SELECT key FROM idempotency.records WHERE key LIKE 'locked-%'")
psql_at "$P" "$PORT" w1 -At >/dev/null <<SQL
BEGIN;
SELECT outcome FROM idem_begin('exp', '$key', '{}');
PREPARE TRANSACTION 'ops_live_claim';
SQL
runs=$(stat "'w1'" purge_runs)
wait_for "the unlocked expired rows purged while the claim is held" "expired w1" 1
wait_for "two more worker passes over w1 while the claim is held" \
  "[ \$(stat \"'w1'\" purge_runs) -ge $((runs + 3)) ] && echo passed" passed
expect_eq "the claimed row is still there, untouched" \
  "$(q w1 "SELECT count(*) FROM idempotency.records WHERE key = '$key' AND expires_at < now()")" 1
expect_eq "the claim is still prepared (nobody waited for it or removed it)" \
  "$(q w1 "SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'ops_live_claim'")" 1
q w1 "COMMIT PREPARED 'ops_live_claim'" >/dev/null
expect_eq "after its commit the claim is a live record" \
  "$(q w1 "SELECT state, attempt FROM idem_check('exp', '$key')")" "in_progress|1"
runs=$(stat "'w1'" purge_runs)
wait_for "two more passes" "[ \$(stat \"'w1'\" purge_runs) -ge $((runs + 2)) ] && echo passed" passed
expect_eq "and is never purged" "$(q w1 "SELECT count(*) FROM idempotency.records WHERE key = '$key'")" 1

step "SIGHUP changes the interval"
log_mark
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = '1 hour'"
reload
log_wait 'idempotency purge launcher reloaded: purging every 3600 s'
runs=$(stat "'w1'" purge_runs)
add_expired w1 5 slow
sleep 3
expect_eq "with a 1 hour interval nothing was purged in 3 s" "$(expired w1)|$(stat "'w1'" purge_runs)" "6|$runs"
log_mark
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = '1s'"
reload
log_wait 'idempotency purge launcher reloaded: purging every 1 s'
wait_for "purged again at 1 s" "expired w1" 1

step "databases created and dropped while it runs; more than max_databases (3)"
# Counted so far: settings, ops_stats, w1 = max_databases.
expect_eq "three databases counted" "$(q w1 "SELECT string_agg(datname, ',' ORDER BY datname) FROM idem_stats()")" "ops_stats,settings,w1"
newdb w2
add_expired w2 700
wait_for "w2 (created after start) purged" "expired w2" 0
expect_eq "w2 counts in the shared row of other databases" \
  "$(q w1 "SELECT datid IS NULL, datname IS NULL, purged_rows FROM idem_stats() WHERE datid IS NULL")" "t|t|700"
q postgres "DROP DATABASE settings" >/dev/null
runs=$(stat "'w1'" purge_runs)
wait_for "a pass after the drop" "[ \$(stat \"'w1'\" purge_runs) -ge $((runs + 2)) ] && echo passed" passed
newdb w3
add_expired w3 300
wait_for "w3 purged" "expired w3" 0
# The freed slot goes to the next database that counts: w2 (its purge worker counts every
# pass) moves out of the shared row; w3, created now, counts into the shared row.
expect_eq "the dropped database's slot was reused; w3 counts into the shared row" \
  "$(q w1 "SELECT string_agg(coalesce(datname, '(other)') || '=' || purged_rows, ',' ORDER BY datname) FROM idem_stats()")" \
  "ops_stats=0,w1=$(stat "'w1'" purged_rows),w2=0,(other)=1000"
! grep -E 'database "?settings"? does not exist|database [0-9]+ does not exist' "$P/server.log" \
  || fail "the launcher tried the dropped database"

step "SIGTERM ends a purge worker mid-pass, and the launcher, which comes back"
log_mark
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = '1s'" "idempotency.purge_batch = 200"
reload
log_wait 'purging every 1 s in batches of 200'
add_expired w1 200000 big
# A worker lives for one pass: find one at work and signal it in the same breath (a pass that
# ended between the two would leave no pid, or a pid that is gone: look again).
wpid=
for _ in $(seq 1 600); do
  wpid=$(q postgres "SELECT pid FROM pg_stat_activity WHERE backend_type = 'idempotency purge worker' AND datname = 'w1' AND state = 'active' LIMIT 1")
  [ -n "$wpid" ] && [ "$(q postgres "SELECT pg_terminate_backend($wpid)" 2>/dev/null)" = t ] && break
  wpid=
  sleep 0.1
done
[ -n "$wpid" ] || fail "no purge worker at work in w1 to send SIGTERM to within 60 s"
wait_for "the purge worker gone" "q postgres \"SELECT count(*) FROM pg_stat_activity WHERE pid = $wpid\"" 0
log_wait "\\[$wpid\\] .*FATAL:  terminating background worker|\\[$wpid\\] .*FATAL:  terminating connection due to administrator command"
wait_for "the rest purged by later passes" "expired w1" 1
lpid=$(launcher_pid)
q postgres "SELECT pg_terminate_backend($lpid)" >/dev/null
log_wait "\\[$lpid\\] .*idempotency purge launcher stopping"
wait_for "a new launcher" "[ -n \"\$(launcher_pid)\" ] && [ \"\$(launcher_pid)\" != $lpid ] && echo new" new
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = '1s'"
reload

step "the worker gives way to CREATE DATABASE ... TEMPLATE and DROP DATABASE of its database"
# Both commands lock the database and then wait at most 5 s for its other sessions to leave
# (CountOtherDBBackends), else fail with "... is being accessed by other users". The backlog
# takes the worker far longer than that at batches of 1 (about 3 minutes here, each batch 1 to
# 3 ms; the step ends it long before): each command must succeed while the worker is at it,
# the worker leaving between two batches with one LOG line. DROP DATABASE (15 and later) then
# waits for every process to absorb a ProcSignalBarrier, the launcher too, also while the
# launcher waits for a worker elsewhere.
T_DDL=$(date +%s)
DDL_ROWS=100000
# worker_in DB: the pids of the purge workers connected to DB (none: empty).
worker_in() { q postgres "SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity WHERE backend_type = 'idempotency purge worker' AND datname = '$1'"; }
# at_work DB [NOT_PID]: "yes" when a worker (not NOT_PID) is connected to DB and DB's backlog
# is falling but not gone.
at_work() {
  local w n
  w=$(worker_in "$1")
  n=$(expired "$1")
  [ -n "$w" ] && [ "$w" != "${2:-}" ] && [ "$n" -lt "$DDL_ROWS" ] && [ "$n" -gt 0 ] && echo yes
}
gave_way() { log_wait "\\[$1\\] .*LOG:  idempotency purge worker for database \"$2\" gave way to a command that needs the database to itself"; }
no_barrier_wait() {
  ! log_has "still waiting for backend with PID $1 to accept ProcSignalBarrier" \
    || fail "$2 waited for the launcher (PID $1) to absorb its ProcSignalBarrier"
}
# ddl_sql SQL: SQL in a session whose statement_timeout (60 s) bounds a wait that would
# otherwise last as long as the worker's pass.
ddl_sql() { psql_at "$P" "$PORT" postgres -At -c "SET statement_timeout = '60s'" -c "$1"; }
# ms_since T: milliseconds since T (date +%s%N).
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
log_mark
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = '1s'" "idempotency.purge_batch = 1"
reload
log_wait 'purging every 1 s in batches of 1$'
newdb ddl
add_expired ddl "$DDL_ROWS" ddl
wait_for "a purge worker at work in ddl" "at_work ddl" yes
wpid=$(worker_in ddl)
left=$(expired ddl)
t=$(date +%s%N)
# The copy allows no connections: the launcher leaves it alone, so that the next worker it
# starts is ddl's.
out=$(ddl_sql "CREATE DATABASE ddl_copy TEMPLATE ddl ALLOW_CONNECTIONS false" 2>&1) \
  || fail "CREATE DATABASE ddl_copy TEMPLATE ddl while the purge worker $wpid was at work ($left of $DDL_ROWS expired records left): $out"
t_create=$(ms_since "$t")
gave_way "$wpid" ddl
[ "$(expired ddl)" -gt 0 ] || fail "the backlog was gone by the end of CREATE DATABASE: not the case under test"
wait_for "a new purge worker at work in ddl" "at_work ddl $wpid" yes
# The launcher now waits for that worker to end its pass.
lpid=$(launcher_pid)
t=$(date +%s%N)
out=$(ddl_sql "DROP DATABASE ddl_copy" 2>&1) || fail "DROP DATABASE ddl_copy (no session in it): $out"
t_drop_copy=$(ms_since "$t")
no_barrier_wait "$lpid" "DROP DATABASE of another database"
wpid=$(worker_in ddl)
left=$(expired ddl)
t=$(date +%s%N)
out=$(ddl_sql "DROP DATABASE ddl" 2>&1) \
  || fail "DROP DATABASE ddl while the purge worker $wpid was at work ($left expired records left): $out"
t_drop=$(ms_since "$t")
gave_way "$wpid" ddl
no_barrier_wait "$lpid" "DROP DATABASE ddl"
log "CREATE DATABASE ... TEMPLATE in $t_create ms; DROP DATABASE of another database in $t_drop_copy ms, of ddl in $t_drop ms ($left expired records left); the step took $(($(date +%s) - T_DDL)) s"
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = '1s'"
reload

step "kill -9 of the launcher: crash restart, and the launcher is back"
lpid=$(launcher_pid)
log_mark
kill -9 "$lpid"
log_wait 'all server processes terminated; reinitializing'
wait_for "a new launcher after the crash restart" "[ -n \"\$(launcher_pid)\" ] && [ \"\$(launcher_pid)\" != $lpid ] && echo new" new
add_expired w1 100 after-crash
wait_for "purging after the crash restart" "expired w1" 1

step "kill -9 of the postmaster, start again: the launcher is back"
pm=$(as_owner head -n 1 "$P/data/postmaster.pid")
children=$(pgrep -P "$pm" | tr '\n' ' ')
kill -9 "$pm"
# Its children notice the postmaster's death and leave; a new postmaster refuses to start
# while one still holds the old shared memory. A dead postmaster that is not reaped (a zombie,
# when init does not reap) looks alive: its lock files go, as an operator would remove them.
wait_for "the old server processes gone" "for c in $children; do [ -d /proc/\$c ] && [ \"\$(awk '{print \$3}' /proc/\$c/stat 2>/dev/null)\" != Z ] && echo \$c; done | grep -c . || true" 0
for _ in $(seq 1 50); do [ -d "/proc/$pm" ] || break; sleep 0.2; done
if [ -d "/proc/$pm" ]; then as_owner rm -f "$P/data/postmaster.pid" "$P/.s.PGSQL.$PORT.lock"; fi
log_mark
start
log_has 'database system was interrupted|was not properly shut down' || fail "no crash recovery after kill -9 of the postmaster"
wait_for "a launcher after the restart" "launcher_pid | grep -c ." 1
expect_eq "the counters start again at zero (new shared memory)" "$(stat "'w1'" purged_rows)" 0
add_expired w1 50 after-restart
wait_for "purging after the postmaster's kill -9" "expired w1" 1
expect_eq "and counting" "$(stat "'w1'" purged_rows)" 50

step "a hot standby: no launcher, nothing purged; at promotion the launcher starts"
[ "$(id -u)" -ne 0 ] || chown postgres: "$R"
as_owner "$PG_BINDIR/pg_basebackup" -h "$P" -p "$PORT" -U postgres -D "$R/data" -X stream -c fast
# The replica's settings by hand rather than -R: pg_basebackup 17+ writes connection options
# (sslnegotiation) that an older libpq in the server's walreceiver may not know.
echo "primary_conninfo = 'host=$P port=$PORT user=postgres'" | as_owner tee -a "$R/data/postgresql.auto.conf" >/dev/null
as_owner touch "$R/data/standby.signal"
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = 0"
reload
cluster_start "$R" "$PORT2" 2>/dev/null
expect_eq "the replica is in recovery" "$(qr postgres "SELECT pg_is_in_recovery()")" t
add_expired w1 40 standby
lsn=$(q postgres "SELECT pg_current_wal_insert_lsn()")
wait_for "the replica replayed the expired records" "qr postgres \"SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn\"" t
sleep 3
expect_eq "no launcher or purge worker on the standby" \
  "$(qr postgres "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'idempotency%'")" 0
expect_eq "the standby's counters exist and have counted nothing" "$(qr w1 "SELECT count(*) FROM idem_stats()")" 0
expect_eq "the expired records are still on the standby" "$(qr w1 "SELECT count(*) FROM idempotency.records WHERE scope = 'exp'")" 41
as_owner "$PG_BINDIR/pg_ctl" promote -D "$R/data" -w >/dev/null
wait_for "a launcher on the promoted server" "qr postgres \"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'idempotency purge launcher'\"" 1
wait_for "the promoted server purges" "qr w1 \"SELECT count(*) FROM idempotency.records WHERE scope = 'exp'\"" 1
cluster_stop "$R" 2>/dev/null

# --- 4. under the torture load --------------------------------------------------------------
step "the worker purges while the torture load runs"
opsconf "${BASE_CONF[@]}" "idempotency.purge_interval = '1s'" "idempotency.purge_batch = 500"
reload
(cd "$ROOT" && cargo build -q -p idempotency-torture)
# A counter slot of its own for the torture database: w2 and w3 go, the launcher frees w2's.
q postgres "DROP DATABASE w2" >/dev/null
q postgres "DROP DATABASE w3" >/dev/null
runs=$(stat "'w1'" purge_runs)
wait_for "a pass after the drops" "[ \$(stat \"'w1'\" purge_runs) -ge $((runs + 2)) ] && echo passed" passed
newdb torture
add_expired torture 20000 pre
total=20000
( for i in $(seq 1 40); do
    add_expired torture 500 "during-$i" 2>/dev/null || exit 1
    sleep 0.25
  done ) &
INSERTER=$!
rc=0
"${CARGO_TARGET_DIR:-$ROOT/target}/debug/idempotency-torture" load --host "$P" --port "$PORT" --dbname torture \
  --connections 16 --requests 4000 --keys 16 >"$DIR/torture.log" 2>&1 || rc=$?
wait "$INSERTER" || fail "inserting expired records during the load failed"
INSERTER=
total=$((total + 40 * 500))
tail -n 5 "$DIR/torture.log"
[ $rc -eq 0 ] || { cat "$DIR/torture.log" >&2; fail "the torture checker found anomalies (exit $rc)"; }
wait_for "every expired record purged" "expired torture" 0
expect_eq "exactly the expired records were purged" "$(stat "'torture'" purged_rows)" "$total"

# --- 5. Prometheus --------------------------------------------------------------------------
step "contrib/prometheus/queries.yaml"
metrics=$(python3 - "$ROOT/contrib/prometheus/queries.yaml" "$DIR/prometheus.sql" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))["idempotency"]
open(sys.argv[2], "w").write(doc["query"])
print(",".join(list(m)[0] for m in doc["metrics"]))
PY
)
query=$(cat "$DIR/prometheus.sql")
cols=$(psql_at "$P" "$PORT" w1 -A -F, -c "$query" | head -n 1)
expect_eq "the query's columns are the file's metrics" "$cols" "$metrics"
expect_eq "one row per counted database" "$(psql_at "$P" "$PORT" w1 -At -c "SELECT count(*) FROM ($query) m")" \
  "$(q w1 "SELECT count(*) FROM idem_stats()")"

grep -E 'terminated by signal 11|PANIC:' "$P/server.log" && fail "a server process crashed"
step "passed in $(( $(date +%s) - T0 )) s"
