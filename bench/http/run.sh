#!/usr/bin/env bash
# `make bench-http`: the payments service under load, over HTTP on loopback. Not a test.
#
# A release build of payments-api (in-process mock processor) on a scratch PostgreSQL with
# pg_stat_statements (build/bench-http, port_of bench-http; the service on 127.0.0.1,
# http_port_of bench-http). wrk (Debian's package, installed when
# missing) drives POST /v1/payments with bench/http/payments.lua:
#   new     every request a new key: claim, charge, checkpoint, payment + completion
#   replay  BENCH_HTTP_REPLAY_KEYS (100) completed keys sent again in turn: a replay
# at each of BENCH_HTTP_CLIENTS (1 16 64) connections for BENCH_HTTP_SECONDS (15) each, after
# a 5 s warm-up. Per run: requests/s, p50 and p99 latency (wrk), and the database's share:
# the execution time PostgreSQL spent in the run's statements (pg_stat_statements
# total_exec_time, reset before each run) per request, against the mean latency.
# Results: bench/http/results.md (BENCH_HTTP_OUT to write elsewhere).
set -euo pipefail

NAME=bench-http
. "$(dirname "$0")/../../scripts/lib.sh"
PG_PORT=$(port_of bench-http)
PORT=$(http_port_of bench-http)
SECONDS_PER_RUN=${BENCH_HTTP_SECONDS:-15}
CLIENTS=${BENCH_HTTP_CLIENTS:-"1 16 64"}
REPLAY_KEYS=${BENCH_HTTP_REPLAY_KEYS:-100}
OUT=${BENCH_HTTP_OUT:-$ROOT/bench/http/results.md}
DIR=$ROOT/build/bench-http
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/payments-api
URL=http://127.0.0.1:$PORT

if ! command -v wrk >/dev/null; then
  log "installing wrk (Debian)"
  [ "$(id -u)" -eq 0 ] || { log "wrk is missing: apt-get install wrk"; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
log "building payments-api (release)"
(cd "$ROOT" && cargo build --release -q -p payments-api)

mkdir -p "$DIR"
cluster_up "$DIR/pg" "$PG_PORT"
PSQL=(psql_at "$DIR/pg" "$PG_PORT")
if [ "$(sql "$DIR/pg" "$PG_PORT" postgres 'SHOW shared_preload_libraries')" != pg_stat_statements ]; then
  "${PSQL[@]}" postgres -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" \
    -c "ALTER SYSTEM SET track_wal_io_timing = on"
  cluster_stop "$DIR/pg"
  cluster_start "$DIR/pg" "$PG_PORT"
fi
"${PSQL[@]}" postgres -c 'DROP DATABASE IF EXISTS payments' -c 'CREATE DATABASE payments'
"${PSQL[@]}" payments -c 'CREATE EXTENSION pg_stat_statements'

"$BIN" serve --database-url "postgresql://postgres@localhost/payments?host=$DIR/pg&port=$PG_PORT" \
  --listen "127.0.0.1:$PORT" >"$DIR/service.log" 2>&1 &
on_exit stop_pid $!
for _ in $(seq 1 100); do curl -sf -o /dev/null "$URL/healthz" && break; sleep 0.1; done
curl -sf -o /dev/null "$URL/healthz" || { cat "$DIR/service.log" >&2; exit 1; }

run_id=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "warm-up (5 s, 16 connections)"
wrk -t2 -c16 -d5s -s "$ROOT/bench/http/payments.lua" "$URL" -- new "warm$run_id" >/dev/null

log "creating $REPLAY_KEYS keys to replay"
for i in $(seq 0 $((REPLAY_KEYS - 1))); do
  code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/v1/payments" -H 'Authorization: Bearer bench' \
    -H "Idempotency-Key: \"rep$run_id-$i\"" -d '{"amount": "10.00", "currency": "EUR", "card": "tok_visa"}')
  [ "$code" = 201 ] || { log "creating key $i answered $code"; exit 1; }
done

# Statement execution (pg_stat_statements) and the WAL writes and flushes of the commits,
# which PostgreSQL does after a statement's execution (pg_stat_wal, track_wal_io_timing).
db_ms() {
  "${PSQL[@]}" payments -At -c \
    "SELECT coalesce(sum(total_exec_time), 0), coalesce(sum(calls), 0),
            (SELECT wal_write_time + wal_sync_time FROM pg_stat_wal)
       FROM pg_stat_statements
      WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'payments')
        AND query NOT LIKE '%pg_stat_statements%' AND query NOT LIKE '%pg_stat_reset_shared%'"
}

rows=()
for scenario in new replay; do
  for c in $CLIENTS; do
    t=$(( c < 2 ? 1 : 2 ))
    payments_before=$("${PSQL[@]}" payments -At -c 'SELECT count(*) FROM payments')
    "${PSQL[@]}" payments -At -c 'SELECT pg_stat_statements_reset()' -c "SELECT pg_stat_reset_shared('wal')" >/dev/null
    if [ "$scenario" = new ]; then args=(new "n$run_id-$c"); else args=(replay "rep$run_id" "$REPLAY_KEYS"); fi
    log "$scenario, $c connections, ${SECONDS_PER_RUN} s"
    json=$(wrk -t$t -c$c -d${SECONDS_PER_RUN}s --timeout 30s -s "$ROOT/bench/http/payments.lua" "$URL" -- "${args[@]}" | tail -n1)
    IFS='|' read -r exec_ms calls wal_ms <<<"$(db_ms)"
    payments_after=$("${PSQL[@]}" payments -At -c 'SELECT count(*) FROM payments')
    row=$(python3 - "$scenario" "$c" "$json" "$exec_ms" "$calls" "$payments_before" "$payments_after" "$wal_ms" <<'EOF'
import json, sys
scenario, c, j, exec_ms, calls, before, after, wal_ms = sys.argv[1:]
j = json.loads(j)
n = j["requests"]
assert j["not_201"] == 0 and j["socket_errors"] == 0, j
written = int(after) - int(before)
# Every new request writes one payment (wrk does not count the at most one request per
# connection still in flight when it stops, which the service still completes); a replay
# writes none.
if scenario == "new":
    assert n <= written <= n + int(c), (scenario, n, written)
else:
    assert written == 0, (scenario, n, written)
exec_per_req = float(exec_ms) / n
wal_per_req = float(wal_ms) / n
mean_ms = j["mean_us"] / 1000
print(f"| {scenario} | {c} | {n / j['seconds']:,.0f} | {j['p50_us'] / 1000:.2f} | {j['p99_us'] / 1000:.2f} | "
      f"{mean_ms:.2f} | {exec_per_req:.3f} | {wal_per_req:.3f} | {100 * (exec_per_req + wal_per_req) / mean_ms:.0f}% | {int(calls) / n:.1f} |")
EOF
)
    rows+=("$row")
    log "$row"
  done
done

mkdir -p "$(dirname "$OUT")"
{
  echo "# payments-api under load"
  echo
  echo "Written by \`make bench-http\` (bench/http/run.sh) on $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores,"
  echo "$("$PG_BINDIR/postgres" --version), payments-api release build, wrk $(wrk -v 2>&1 | head -n1 | awk '{print $2}'),"
  echo "${SECONDS_PER_RUN} s per run after a 5 s warm-up; service, database, mock processor and wrk share the machine."
  echo
  echo "| scenario | connections | requests/s | p50 ms | p99 ms | mean ms | DB exec ms / request | WAL write+flush ms / request | DB share of mean | statements / request |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "- new: every request a new key (claim, charge at the in-process mock processor, checkpoint,"
  echo "  payment + completion + COMMIT pipelined); replay: $REPLAY_KEYS completed keys sent again in turn"
  echo "  (idem_begin answers replay, the payment is read back). Every answer was 201, no socket error;"
  echo "  each new request wrote one payment (plus at most one per connection still in flight when wrk"
  echo "  stopped), the replays none (checked by the script)."
  echo "- DB exec ms / request: pg_stat_statements' total_exec_time of the run's statements divided by"
  echo "  the requests. WAL write+flush: pg_stat_wal's wal_write_time + wal_sync_time (track_wal_io_timing),"
  echo "  the commits' writes and fsyncs, which PostgreSQL does after a statement's execution and so are"
  echo "  not in the first; one fsync serves every commit waiting for it (group commit), so at many"
  echo "  connections this undercounts the time each request waited for it. DB share: the two against the"
  echo "  mean latency. The rest is the network between the processes, the service, the processor call and"
  echo "  queueing for the 2 cores (at 64 connections most of the latency is queueing)."
  echo "- Load average when the run started: $LOAD_START (other sessions' builds share the machine)."
  echo "- One run each, on a machine shared with other work: the figures are noisy; compare rows of"
  echo "  one run, not runs of different days."
} >"$OUT"
log "results in $OUT"
