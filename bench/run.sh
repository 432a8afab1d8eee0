#!/usr/bin/env bash
# The benchmark harness (`make bench`, `make test-bench`): what idempotency costs, measured side
# by side with what a team would use instead, in one run on one scratch PostgreSQL.
#
#   bash bench/run.sh                       the full run (see bench/README.md)
#   BENCH_SECONDS=2 BENCH_SCALES="10000" BENCH_PURGE=20000 BENCH_RESULTS=build/bench/small bash bench/run.sh
#
# It starts its own cluster (build/bench; TEST_DIR / TEST_PORT move it) with fixed
# settings that it prints, loads bench/setup.sql and bench/alt.sql, and runs pgbench with the
# scripts in bench/pgbench/ (prepared protocol, unix socket):
#   matrix       (1) baseline, (2) one-transaction idempotency, (3) replay and (3') a primary-key
#                SELECT, (4) the PL/pgSQL alternative, (5) phases, (6) the round-trip floor of
#                (2), and the least (2) and (3) can do in plain SQL: (6') the key's record
#                written once, (3'') the primary-key SELECT with the fingerprint compared; at 1,
#                4 and 16 clients, with synchronous_commit on and off; HOT share of completions
#                from pg_stat_user_tables
#   fingerprint  idem_fingerprint against sha256(jsonb::text::bytea) on ~100 B, 1 KB, 64 KB
#   canonical    where sha256(jsonb::text) is wrong (shown on the server)
#   purge        idem_purge of BENCH_PURGE expired records under a rate-limited load: p99 with
#                and without it; then the same purge by the purge worker (library preloaded)
#   scale        begin latency and bytes per record at each of BENCH_SCALES stored keys
#   instructions instructions per request of each case, callgrind (bench/instructions.sh, its
#                INSTR_* settings; BENCH_INSTRUCTIONS=off leaves it out)
# Results: results.csv, results.md and bench.png (bench/report.py), machine.txt,
# canonical.txt and instructions.md, written to BENCH_RESULTS (default bench/results, where the
# last full run is kept) once the run has passed; the raw pgbench logs stay in build/bench/out/logs.
# The extension must already be installed into the PostgreSQL of PG_BINDIR (the Makefile
# does it). Ratios are what to read: absolute figures drift with the machine's load.
set -euo pipefail
NAME=bench
. "$(dirname "$0")/../scripts/lib.sh"

scratch bench
BENCH_OUT=$DIR/out
BENCH_RESULTS=${BENCH_RESULTS:-$ROOT/bench/results}
BENCH_SECONDS=${BENCH_SECONDS:-5}           # per pgbench run of the matrix
BENCH_CLIENTS=${BENCH_CLIENTS:-"1 4 16"}
BENCH_ROUNDS=${BENCH_ROUNDS:-3}             # interleaved repetitions of every matrix cell
BENCH_SYNC=${BENCH_SYNC:-"on off"}
BENCH_SCALES=${BENCH_SCALES:-"10000 1000000 10000000"}
BENCH_REPLAY_KEYS=${BENCH_REPLAY_KEYS:-100000}
BENCH_PURGE=${BENCH_PURGE:-1000000}         # expired records purged under load
BENCH_PURGE_RATE=${BENCH_PURGE_RATE:-200}   # tps of the live load during the purge test
BENCH_PURGE_SECONDS=${BENCH_PURGE_SECONDS:-30}

export PGHOST=$DIR PGPORT=$PORT PGUSER=postgres PGDATABASE=bench
PGBENCH=("$PG_BINDIR/pgbench" -n -M prepared)
CSV=$BENCH_OUT/results.csv
RUN_TAG=$(date -u +%s)

q() { sql "$DIR" "$PORT" bench "$1"; }

# Python with matplotlib for the plot (installed from PyPI if missing).
python3 -c 'import matplotlib' 2>/dev/null || {
  log "installing matplotlib"
  pip install -q matplotlib >&2
}

# A fresh cluster every run: no data or settings from an earlier one.
cluster_fresh "$DIR" "$PORT"
mkdir -p "$BENCH_OUT/logs"
kill_load() { [ -z "${BG_PID:-}" ] || kill "$BG_PID" 2>/dev/null || true; }
on_exit kill_load

# The fixed settings of every run (the rest are PostgreSQL's defaults).
psql_at "$DIR" "$PORT" postgres <<'EOF'
ALTER SYSTEM SET shared_buffers = '1GB';
ALTER SYSTEM SET max_wal_size = '8GB';
ALTER SYSTEM SET checkpoint_timeout = '30min';
ALTER SYSTEM SET wal_buffers = '16MB';
ALTER SYSTEM SET work_mem = '64MB';
ALTER SYSTEM SET maintenance_work_mem = '1GB';
ALTER SYSTEM SET max_connections = 100;
ALTER SYSTEM SET fsync = on;
ALTER SYSTEM SET full_page_writes = on;
ALTER SYSTEM SET jit = off;
ALTER SYSTEM SET log_min_messages = warning;
EOF
cluster_stop "$DIR"
cluster_start "$DIR" "$PORT"
sql "$DIR" "$PORT" postgres "CREATE DATABASE bench"
# BENCH_SQL_VERSION: the extension at a kept release's SQL (served by the current library)
# instead of the crate's, to compare one version's SQL with the next's; bench/setup.sql then
# leaves it as it is.
[ -z "${BENCH_SQL_VERSION:-}" ] || q "CREATE EXTENSION idempotency VERSION '$BENCH_SQL_VERSION'" >/dev/null

# The machine and the settings, printed and kept with the results.
{
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
  echo "memory: $(free -g | awk '/Mem:/ {print $2 " GiB"}')"
  echo "kernel: $(uname -r)"
  echo "disk: $(df -h "$DIR" | awk 'NR==2 {print $1 " (" $2 ", mounted on " $6 ")"}') rotational=$(cat /sys/block/$(basename "$(df "$DIR" | awk 'NR==2 {print $1}')" | sed 's/[0-9]*$//')/queue/rotational 2>/dev/null || echo '?')"
  echo "postgres: $(q 'SHOW server_version')"
  echo "build: ${BENCH_PROFILE:-release} build of the extension; SQL of version ${BENCH_SQL_VERSION:-$(crate_version)}"
  echo "command: ${BENCH_COMMAND:-bash bench/run.sh}"
  echo "pgbench: -M prepared, unix socket, -j min(clients, $(nproc)), ${BENCH_SECONDS}s per run, median of $BENCH_ROUNDS interleaved rounds"
  for s in shared_buffers max_wal_size checkpoint_timeout wal_buffers work_mem fsync \
           full_page_writes wal_level jit max_connections; do
    echo "setting $s = $(q "SHOW $s")"
  done
} > "$BENCH_OUT/machine.txt"
cat "$BENCH_OUT/machine.txt" >&2

log "loading the bench schema ($BENCH_REPLAY_KEYS replay keys)"
psql_at "$DIR" "$PORT" bench -v nreplay="$BENCH_REPLAY_KEYS" -f "$ROOT/bench/setup.sql" >/dev/null
psql_at "$DIR" "$PORT" bench -f "$ROOT/bench/alt.sql" >/dev/null

echo "section,case,sync,clients,value,unit,extra" > "$CSV"
row() { echo "$1,$2,$3,$4,$5,$6,$7" >> "$CSV"; }

# One pgbench run: prints "tps latency_ms"; the full output goes to the log dir. RUN_UNDER
# (an array, empty by default) is a command that pgbench runs under (the profiler).
RUN_UNDER=()
bench_run() {  # name clients seconds script [pgbench args...]
  local name=$1 clients=$2 secs=$3 script=$4; shift 4
  local jobs=$(( clients < $(nproc) ? clients : $(nproc) ))
  local out=$BENCH_OUT/logs/$name.txt
  "${RUN_UNDER[@]}" "${PGBENCH[@]}" -c "$clients" -j "$jobs" -T "$secs" -D run="r$RUN_TAG" \
      -D nreplay="$BENCH_REPLAY_KEYS" "$@" -f "$script" > "$out" 2>&1 \
    || { cat "$out" >&2; return 1; }
  # Any failed transaction makes the figure meaningless: stop.
  if grep -q '^number of failed transactions: [1-9]' "$out"; then
    cat "$out" >&2; return 1
  fi
  local tps lat
  tps=$(awk '/^tps = / {print $3; exit}' "$out")
  lat=$(awk '/^latency average = / {print $4; exit}' "$out")
  echo "$tps $lat"
}

hot_counters() {  # n_tup_upd n_tup_hot_upd of idempotency.records (after the stats flush)
  sleep 1.2
  q "SELECT n_tup_upd || ' ' || n_tup_hot_upd FROM pg_stat_user_tables
       WHERE schemaname = 'idempotency' AND relname = 'records'"
}

# --- the matrix ----------------------------------------------------------------------------
# Each (synchronous_commit, clients) cell runs every case BENCH_ROUNDS times, the cases
# interleaved and their order rotated each round, and keeps each case's median: the machine's
# load drifts, and interleaving spreads the drift over all cases alike (median: scripts/lib.sh).
declare -A HOT_UPD HOT_HOT
CASES=(baseline idem replay pkselect alt phases floor keyrow pkcheck)
for sync in $BENCH_SYNC; do
  sql "$DIR" "$PORT" postgres "ALTER SYSTEM SET synchronous_commit = $sync" >/dev/null
  q "SELECT pg_reload_conf()" >/dev/null
  for c in $BENCH_CLIENTS; do
    declare -A TPS=() LAT=()
    for round in $(seq 1 "$BENCH_ROUNDS"); do
      for i in "${!CASES[@]}"; do
        case=${CASES[$(( (i + round - 1) % ${#CASES[@]} ))]}
        q "CHECKPOINT" >/dev/null
        if [ "$case" = idem ] || [ "$case" = phases ]; then read -r u0 h0 < <(hot_counters); fi
        res=$(bench_run "matrix-$case-$sync-$c-$round" "$c" "$BENCH_SECONDS" "$ROOT/bench/pgbench/$case.sql")
        read -r tps lat <<< "$res"
        log "sync=$sync clients=$c round $round $case: $tps tps, $lat ms"
        TPS[$case]="${TPS[$case]:-} $tps"; LAT[$case]="${LAT[$case]:-} $lat"
        if [ "$case" = idem ] || [ "$case" = phases ]; then
          read -r u1 h1 < <(hot_counters)
          HOT_UPD[$case]=$(( ${HOT_UPD[$case]:-0} + u1 - u0 ))
          HOT_HOT[$case]=$(( ${HOT_HOT[$case]:-0} + h1 - h0 ))
        fi
      done
    done
    for case in "${CASES[@]}"; do
      row matrix "$case" "$sync" "$c" "$(echo "${TPS[$case]}" | median)" tps \
        "median of$(echo "${TPS[$case]}" | tr -s ' ' | sed 's/ / /g'); latency $(echo "${LAT[$case]}" | median) ms"
    done
    unset TPS LAT
  done
done
sql "$DIR" "$PORT" postgres "ALTER SYSTEM RESET synchronous_commit" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
for case in idem phases; do
  row hot "$case" all all "${HOT_HOT[$case]:-0}" updates "of ${HOT_UPD[$case]:-0}"
  log "HOT completions ($case): ${HOT_HOT[$case]:-0} of ${HOT_UPD[$case]:-0}"
done

# Where a request's time goes: pgbench -r's per-statement latency at 1 client, sync off.
sql "$DIR" "$PORT" postgres "ALTER SYSTEM SET synchronous_commit = off" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
for case in baseline idem; do
  bench_run "breakdown-$case" 1 "$BENCH_SECONDS" "$ROOT/bench/pgbench/$case.sql" -r >/dev/null
  awk '/statement latencies/ {on = 1; next} on && $1 ~ /^[0-9.]+$/ && $3 !~ /^\\/ {
         stmt = ""; for (i = 3; i <= NF && i <= 6; i++) stmt = stmt " " $i
         gsub(/,/, ";", stmt); sub(/^ /, "", stmt); print $1 "\t" stmt}' \
      "$BENCH_OUT/logs/breakdown-$case.txt" | while IFS=$'\t' read -r ms stmt; do
    row breakdown "$case" off 1 "$ms" ms "$stmt"
  done
done
sql "$DIR" "$PORT" postgres "ALTER SYSTEM RESET synchronous_commit" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null

# Who runs during a 1-client request (synchronous_commit on, the default): at 1 client the
# client, the kernel and the server take turns for every statement, and a transaction's time is
# their CPU plus the time when no CPU runs (a wake-up, the commit's WAL flush). perf samples
# every CPU every 250 us of its time (a software clock: the virtual machine has no hardware
# counters) and each sample says who ran; samples x 250 us / transactions is CPU time per
# transaction. Each case alone, after a CHECKPOINT, with the WAL each transaction wrote
# (pg_current_wal_insert_lsn before and after). Without perf (the Debian package linux-perf) or
# its permission, the WAL column only.
PERF_OK=no
if command -v perf >/dev/null && perf record -q -a -e cpu-clock -c 250000 -o "$BENCH_OUT/logs/perf-probe.data" -- true >/dev/null 2>&1; then
  PERF_OK=yes
else
  log "perf is missing or may not sample every CPU: the 1-client profile has the WAL column only"
fi
for case in pkselect pkcheck replay floor keyrow idem; do
  q "CHECKPOINT" >/dev/null
  lsn0=$(q "SELECT pg_current_wal_insert_lsn()")
  fpi0=$(q "SELECT coalesce((SELECT wal_fpi FROM pg_stat_wal), -1)" 2>/dev/null || echo -1)
  RUN_UNDER=()
  [ "$PERF_OK" = no ] || RUN_UNDER=(perf record -q -a -e cpu-clock -c 250000 -o "$BENCH_OUT/logs/who-$case.perf" --)
  # (keys of their own, w<tag>-..., apart from the matrix's r<tag>-...: a later -D wins)
  res=$(bench_run "who-$case" 1 "$BENCH_SECONDS" "$ROOT/bench/pgbench/$case.sql" -D run="w$RUN_TAG")
  RUN_UNDER=()
  read -r tps _ <<< "$res"
  lsn1=$(q "SELECT pg_current_wal_insert_lsn()")
  n=$(awk '/^number of transactions actually processed: / {split($6, a, "/"); print a[1]}' "$BENCH_OUT/logs/who-$case.txt")
  [ "${n:-0}" -gt 0 ] || { cat "$BENCH_OUT/logs/who-$case.txt" >&2; die "no transaction in the 1-client profile of $case"; }
  wal=$(q "SELECT round(pg_wal_lsn_diff('$lsn1', '$lsn0') / $n)")
  # Full-page images per transaction (pg_stat_wal, PostgreSQL 14 and later; its counters are
  # flushed when pgbench's backend ends, which it has): the first change of a page after the
  # CHECKPOINT writes the whole page, so a case that touches many index pages at random writes
  # more of them.
  fpi=n/a
  if [ "$fpi0" != -1 ]; then
    wait_true "$DIR" "$PORT" bench 10 "pg_stat_wal counts the full-page images of $case" \
      "SELECT wal_fpi > $fpi0 OR $wal < 100 FROM pg_stat_wal"
    fpi=$(q "SELECT round((wal_fpi - $fpi0)::numeric / $n, 2) FROM pg_stat_wal")
  fi
  us=$(awk -v t="$tps" 'BEGIN {printf "%.1f", 1e6 / t}')
  if [ "$PERF_OK" = yes ]; then
    # CPU microseconds per transaction of: the server's PostgreSQL code (and libc), the
    # extension's library, the server in the kernel (its image and modules), the client,
    # anything else; and the idle CPUs (report.py shows the time when no CPU runs). A line is "samples comm dso", the dso possibly with
    # spaces ("idempotency.so (deleted)" after a reinstall during the run).
    perf report -i "$BENCH_OUT/logs/who-$case.perf" --stdio -q --sort comm,dso -F sample,comm,dso \
        > "$BENCH_OUT/logs/who-$case.report" 2>"$BENCH_OUT/logs/who-$case.report.err" \
      || { cat "$BENCH_OUT/logs/who-$case.report.err" >&2; die "perf report failed ($case)"; }
    read -r total pg ext kern client other idle < <(awk -v n="$n" '
      NF >= 3 { s = $1; c = $2; d = $3; for (i = 4; i <= NF; i++) d = d " " $i; total += s
        if (c == "postgres" && d ~ /^idempotency\.so/) ext += s
        else if (c == "postgres" && d ~ /^\[/ && d != "[vdso]" && d != "[unknown]") kern += s
        else if (c == "postgres") pg += s
        else if (c == "pgbench") client += s
        else if (c == "swapper") idle += s
        else other += s }
      END { f = 250 / n; printf "%d %.1f %.1f %.1f %.1f %.1f %.1f\n", total, pg * f, ext * f, kern * f, client * f, other * f, idle * f }' \
      "$BENCH_OUT/logs/who-$case.report")
    # Every CPU is sampled all the time, idle or not: fewer samples than half the CPUs' time
    # means perf lost them, and the figures would be short.
    [ "$total" -ge $(( $(nproc) * BENCH_SECONDS * 4000 / 2 )) ] \
      || die "perf recorded $total samples for $case, expected about $(( $(nproc) * BENCH_SECONDS * 4000 ))"
    row who "$case" on 1 "$us" us/transaction \
      "tps $tps; wal $wal; fpi $fpi; postgres $pg; extension $ext; kernel $kern; client $client; other $other; idle $idle"
  else
    row who "$case" on 1 "$us" us/transaction "tps $tps; wal $wal; fpi $fpi"
  fi
  log "1-client profile of $case: $tps tps, $wal WAL bytes and $fpi full-page images per transaction"
done

# Bytes per record as the protocol leaves them (no response stored), after a VACUUM.
q "VACUUM idempotency.records" >/dev/null
read -r n bytes heap idx < <(q "SELECT count(*), pg_total_relation_size('idempotency.records'),
    pg_relation_size('idempotency.records'), pg_indexes_size('idempotency.records')
    FROM idempotency.records" | tr '|' ' ')
row bytes protocol all "$n" "$(( bytes / n ))" bytes/record "heap $(( heap / n )) indexes $(( idx / n ))"
log "protocol records: $n, $(( bytes / n )) bytes/record (heap $(( heap / n )), indexes $(( idx / n )))"

# --- fingerprint ---------------------------------------------------------------------------
for size in 100 1k 64k; do
  n=$(q "SELECT count(*) FROM bench.docs_$size")
  avg=$(q "SELECT round(avg(length(doc::text))) FROM bench.docs_$size")
  for fn in idem sha256; do
    f=$BENCH_OUT/logs/fp-$fn-$size.sql
    if [ "$fn" = idem ]; then
      echo "SELECT count(idem_fingerprint(doc)) FROM bench.docs_$size;" > "$f"
    else
      echo "SELECT count(sha256(doc::text::bytea)) FROM bench.docs_$size;" > "$f"
    fi
    res=$(bench_run "fp-$fn-$size" 1 "$(( BENCH_SECONDS / 2 > 2 ? BENCH_SECONDS / 2 : 2 ))" "$f")
    read -r tps lat <<< "$res"
    per=$(awk -v l="$lat" -v n="$n" 'BEGIN {printf "%.2f", l * 1000 / n}')
    row fingerprint "$fn" na "$size" "$per" "us/doc" "avg $avg bytes of jsonb text; $n docs per statement"
    log "fingerprint $fn $size (~$avg B): $per us/doc"
  done
done

# --- where sha256(jsonb::text) is wrong ----------------------------------------------------
psql_at "$DIR" "$PORT" bench > "$BENCH_OUT/canonical.txt" <<'EOF'
\pset footer off
SELECT j1, j2,
       sha256(j1::jsonb::text::bytea) = sha256(j2::jsonb::text::bytea) AS "sha256(jsonb::text) equal",
       idem_fingerprint(j1::jsonb) = idem_fingerprint(j2::jsonb)       AS "idem_fingerprint equal",
       j1::jsonb::text AS "jsonb::text of the first", idem_canonical(j1::jsonb) AS "idem_canonical"
FROM (VALUES ('{"amount": 1.0}', '{"amount": 1}'),
             ('{"amount": 10.50}', '{"amount": 10.5}'),
             ('{"bb": 1, "a": 2, "ccc": 3}', '{"a": 2, "ccc": 3, "bb": 1}')) AS t(j1, j2);
EOF
cat "$BENCH_OUT/canonical.txt" >&2

# --- purge under load ----------------------------------------------------------------------
log "purge: loading $BENCH_PURGE expired records"
q "INSERT INTO idempotency.records (created_at, expires_at, lease_expires_at, lease, owner,
        attempt, http_status, state, scope, key, fingerprint, resource)
     SELECT now() - interval '2 days', now() - interval '1 day', NULL, 60000000, 'postgres'::regrole,
            1, 201, 'c', 'tenant:9 POST /v1/payments', md5(i::text)::uuid::text,
            sha256(i::text::bytea), 'payments/' || i
     FROM generate_series(1, $BENCH_PURGE) AS i" >/dev/null
q "VACUUM ANALYZE idempotency.records" >/dev/null
q "CHECKPOINT" >/dev/null
purge_load() {  # name: the rate-limited live load with per-transaction latencies logged
  mkdir -p "$BENCH_OUT/logs/$1"
  (cd "$BENCH_OUT/logs/$1" && "${PGBENCH[@]}" -c 4 -j 2 -T "$BENCH_PURGE_SECONDS" -R "$BENCH_PURGE_RATE" \
      -D run="r$RUN_TAG$1" -l --log-prefix=tx -f "$ROOT/bench/pgbench/idem.sql" > ../$1.txt 2>&1)
}
# p99 (ms) of the transactions that started within [from, to) (epoch seconds, fractional).
p99() {  # dir from to
  cat "$1"/tx.* | awk -v a="$2" -v b="$3" '{t = $5 + $6 / 1e6 - $3 / 1e6; if (t >= a && t < b) print $3 / 1000}' \
    | sort -n | awk '{v[NR] = $1} END {if (NR == 0) {print "nan 0"; exit} i = int(NR * 0.99); if (i < 1) i = 1; print v[i], NR}'
}
t0=$(date +%s.%N); purge_load idle; t1=$(date +%s.%N)
read -r idle_p99 idle_n < <(p99 "$BENCH_OUT/logs/idle" "$t0" "$t1")
log "purge: live load alone p99 $idle_p99 ms over $idle_n transactions"
purge_load busy & BG_PID=$!
sleep 2
p0=$(date +%s.%N)
purged=0
while :; do
  k=$(q "SELECT idem_purge(10000)")
  purged=$(( purged + k ))
  [ "$k" -gt 0 ] || break
done
p1=$(date +%s.%N)
wait "$BG_PID"; BG_PID=
read -r busy_p99 busy_n < <(p99 "$BENCH_OUT/logs/busy" "$p0" "$p1")
purge_s=$(awk -v a="$p0" -v b="$p1" 'BEGIN {printf "%.1f", b - a}')
log "purge: $purged rows in $purge_s s; live load p99 during it $busy_p99 ms over $busy_n transactions"
if awk -v a="$p0" -v b="$p1" -v s="$BENCH_PURGE_SECONDS" 'BEGIN {exit !(b - a > s - 2)}'; then
  log "purge: WARNING the purge outlasted the load; p99 covers only its first ${BENCH_PURGE_SECONDS}s"
fi
row purge idle_p99 on 4 "$idle_p99" ms "$idle_n tx at ${BENCH_PURGE_RATE} tps"
row purge purge_p99 on 4 "$busy_p99" ms "$busy_n tx; $purged rows purged in $purge_s s"

# The same purge by the purge worker (idempotency in shared_preload_libraries), side by side:
# the server restarted with the library preloaded and the worker off, the same expired
# records loaded again, the live load alone, then the worker switched on (purge_interval 1s,
# its default batch of 10,000) until idem_stats() counts every row purged. Afterwards the
# server goes back to the settings of the other sections.
log "purge worker: restarting with idempotency preloaded, worker off; loading $BENCH_PURGE expired records"
# (Before PostgreSQL 17 ALTER SYSTEM takes a custom setting only once the session has a
# placeholder of it: the SET makes one.)
psql_at "$DIR" "$PORT" postgres -c "SET idempotency.purge_interval = 0" \
  -c "ALTER SYSTEM SET idempotency.purge_interval = 0" \
  -c "ALTER SYSTEM SET shared_preload_libraries = 'idempotency'" >/dev/null
cluster_stop "$DIR"
cluster_start "$DIR" "$PORT"
q "INSERT INTO idempotency.records (created_at, expires_at, lease_expires_at, lease, owner,
        attempt, http_status, state, scope, key, fingerprint, resource)
     SELECT now() - interval '2 days', now() - interval '1 day', NULL, 60000000, 'postgres'::regrole,
            1, 201, 'c', 'tenant:9 POST /v1/payments', 'w-' || md5(i::text)::uuid::text,
            sha256(i::text::bytea), 'payments/' || i
     FROM generate_series(1, $BENCH_PURGE) AS i" >/dev/null
q "VACUUM ANALYZE idempotency.records" >/dev/null
q "CHECKPOINT" >/dev/null
t0=$(date +%s.%N); purge_load widle; t1=$(date +%s.%N)
read -r widle_p99 widle_n < <(p99 "$BENCH_OUT/logs/widle" "$t0" "$t1")
log "purge worker: live load alone (preloaded) p99 $widle_p99 ms over $widle_n transactions"
purge_load wbusy & BG_PID=$!
sleep 2
p0=$(date +%s.%N)
q "ALTER SYSTEM SET idempotency.purge_interval = '1s'" >/dev/null
q "SELECT pg_reload_conf()" >/dev/null
wpurged=0
for _ in $(seq 1 6000); do
  wpurged=$(q "SELECT coalesce(sum(purged_rows), 0) FROM idem_stats() WHERE datname = 'bench'")
  [ "$wpurged" -lt "$BENCH_PURGE" ] || break
  sleep 0.1
done
p1=$(date +%s.%N)
[ "$wpurged" -ge "$BENCH_PURGE" ] || die "purge worker: only $wpurged of $BENCH_PURGE rows purged in 600 s"
wait "$BG_PID"; BG_PID=
read -r wbusy_p99 wbusy_n < <(p99 "$BENCH_OUT/logs/wbusy" "$p0" "$p1")
wpurge_s=$(awk -v a="$p0" -v b="$p1" 'BEGIN {printf "%.1f", b - a}')
log "purge worker: $wpurged rows in $wpurge_s s (from the reload); live load p99 during it $wbusy_p99 ms over $wbusy_n transactions"
if awk -v a="$p0" -v b="$p1" -v s="$BENCH_PURGE_SECONDS" 'BEGIN {exit !(b - a > s - 2)}'; then
  log "purge worker: WARNING the purge outlasted the load; p99 covers only its first ${BENCH_PURGE_SECONDS}s"
fi
row purge worker_idle_p99 on 4 "$widle_p99" ms "$widle_n tx at ${BENCH_PURGE_RATE} tps, library preloaded"
row purge worker_p99 on 4 "$wbusy_p99" ms "$wbusy_n tx; $wpurged rows purged by the worker in $wpurge_s s"
q "ALTER SYSTEM RESET idempotency.purge_interval" >/dev/null
q "ALTER SYSTEM RESET shared_preload_libraries" >/dev/null
cluster_stop "$DIR"
cluster_start "$DIR" "$PORT"

# --- scale ---------------------------------------------------------------------------------
for nkeys in $BENCH_SCALES; do
  # The keys are UUIDs made from md5(i): they arrive in random order, as real keys do.
  log "scale: loading $nkeys stored keys (INSERT ... SELECT, keys in random order)"
  q "TRUNCATE idempotency.records" >/dev/null
  q "INSERT INTO idempotency.records (created_at, expires_at, lease_expires_at, lease, owner,
          attempt, http_status, state, scope, key, fingerprint, resource)
       SELECT now(), now() + interval '7 days', NULL, 60000000, 'postgres'::regrole, 1, 201, 'c',
              'tenant:' || (i % 1000) || ' POST /v1/payments', md5(i::text)::uuid::text,
              idem_fingerprint(jsonb_build_object('amount', i, 'currency', 'EUR')),
              'payments/' || i
       FROM generate_series(1, $nkeys) AS i" >/dev/null
  q "VACUUM ANALYZE idempotency.records" >/dev/null
  q "CHECKPOINT" >/dev/null
  read -r bytes heap idx < <(q "SELECT pg_total_relation_size('idempotency.records'),
      pg_relation_size('idempotency.records'), pg_indexes_size('idempotency.records')" | tr '|' ' ')
  row scale bytes na "$nkeys" "$(( bytes / nkeys ))" bytes/record "heap $(( heap / nkeys )) indexes $(( idx / nkeys ))"
  log "scale $nkeys: $(( bytes / nkeys )) bytes/record (heap $(( heap / nkeys )), indexes $(( idx / nkeys )))"
  for s in new replay; do
    res=$(bench_run "scale-$s-$nkeys" 1 "$BENCH_SECONDS" "$ROOT/bench/pgbench/scale_$s.sql" -r -D nkeys="$nkeys")
    # The idem_begin statement's own latency (pgbench -r).
    lat=$(awk '/idem_begin/ {print $1; exit}' "$BENCH_OUT/logs/scale-$s-$nkeys.txt")
    row scale "begin_$s" on "$nkeys" "$lat" ms "idem_begin statement latency; 1 client"
    log "scale $nkeys: idem_begin ($s key) $lat ms"
  done
done

# --- instructions per request (bench/instructions.sh, its own template server) -------------
# BENCH_INSTRUCTIONS=off leaves it out (make test-bench does: make test-instructions runs it).
cluster_stop "$DIR"
if [ "${BENCH_INSTRUCTIONS:-on}" = on ]; then
  log "instructions per request (bench/instructions.sh)"
  env -u TEST_PORT -u TEST_DIR INSTR_PROFILE="${BENCH_PROFILE:-release}" \
    INSTR_COMMAND="${BENCH_COMMAND:-bash bench/run.sh}" bash "$ROOT/bench/instructions.sh"
fi

echo "duration: $(( ($(date -u +%s) - RUN_TAG + 30) / 60 )) min (the whole run, cluster set-up included)" >> "$BENCH_OUT/machine.txt"
python3 "$ROOT/bench/report.py" "$BENCH_OUT"
mkdir -p "$BENCH_RESULTS"
cp "$BENCH_OUT"/{results.md,results.csv,bench.png,machine.txt,canonical.txt} "$BENCH_RESULTS/"
[ "${BENCH_INSTRUCTIONS:-on}" != on ] || cp "$ROOT/build/bench/instructions/results.md" "$BENCH_RESULTS/instructions.md"
log "results: $BENCH_RESULTS/results.md, results.csv, bench.png (raw logs in $BENCH_OUT/logs)"
