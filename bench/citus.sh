#!/usr/bin/env bash
# Scale-out benchmark (`make bench-citus CITUS_PG_CONFIG=...`, docs/scale-out.md): the
# one-transaction idempotent payment (bench/pgbench/citus_idem.sql) through a Citus coordinator
# with two workers, against the same on one plain node of the same PostgreSQL, side by side in
# one run on this machine; the payment without idempotency (citus_baseline.sql) on both, for
# Citus's own cost. pgbench -M prepared over TCP on 127.0.0.1, interleaved rounds, the median.
#
#   CITUS_PG_CONFIG      pg_config of a PostgreSQL with Citus and this extension installed
#   BENCH_CITUS_PORT     the coordinator's port (default: scripts/lib.sh port_of bench-citus,
#                        54383; workers +1, +2; the plain node +3)
#   BENCH_SECONDS (20)   per pgbench run; BENCH_CLIENTS ("1 16"); BENCH_ROUNDS (3)
# Results: build/bench-citus/results.md (and the pgbench logs beside it).
set -euo pipefail

NAME=bench-citus
: "${CITUS_PG_CONFIG:?set CITUS_PG_CONFIG to the pg_config of a PostgreSQL with Citus and this extension installed}"
PG_BINDIR=$("$CITUS_PG_CONFIG" --bindir)
# shellcheck source=../scripts/lib.sh
. "$(dirname "$0")/../scripts/lib.sh"
PORT=${BENCH_CITUS_PORT:-$(port_of bench-citus)}
PLAIN_PORT=$((PORT + 3))
SECONDS_EACH=${BENCH_SECONDS:-20}
CLIENTS=${BENCH_CLIENTS:-"1 16"}
ROUNDS=${BENCH_ROUNDS:-3}
BASE=$ROOT/build/bench-citus
OUT=$BASE/results.md
# shellcheck source=../scripts/citus-cluster.sh
. "$ROOT/scripts/citus-cluster.sh"

psql() { "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d bench "$@"; }
mkdir -p "$BASE"
trap 'citus_cluster_stop "$BASE"; cluster_stop "$BASE/plain"' EXIT

log "a coordinator and two workers on $PORT..$((PORT + 2)), one plain node on $PLAIN_PORT"
citus_cluster_start "$BASE" "$PORT" bench
cluster_stop "$BASE/plain"
rm -rf "$BASE/plain"
mkdir -p "$BASE/plain"
# The plain node: the same settings without Citus.
PGCLUSTER_SETTINGS=$(citus_settings | grep -v -e citus -e shared_preload_libraries) \
  cluster_start "$BASE/plain" "$PLAIN_PORT"
"$PG_BINDIR/psql" -X -q -h 127.0.0.1 -U postgres -p "$PLAIN_PORT" -d postgres -c "CREATE DATABASE bench"

TABLE='CREATE TABLE payments (tenant text COLLATE "C" NOT NULL, id bigserial, amount integer NOT NULL,
                              currency text NOT NULL, PRIMARY KEY (tenant, id))'
# The library loaded before every session's first query (idem_distribute requires it).
for p in "$PORT" $((PORT + 1)) $((PORT + 2)); do
  psql -p "$p" -c "SET citus.enable_ddl_propagation = off" \
    -c "ALTER DATABASE bench SET session_preload_libraries = 'idempotency'"
done
psql -p "$PORT" -c "CREATE EXTENSION idempotency" -c "$TABLE" \
  -c "SELECT create_distributed_table('payments', 'tenant')" -c "SELECT idem_distribute('payments')" >/dev/null
psql -p "$PLAIN_PORT" -c "CREATE EXTENSION idempotency" -c "$TABLE" >/dev/null
CITUS=$(psql -p "$PORT" -At -c "SELECT citus_version()")
PG=$("$PG_BINDIR/postgres" --version)

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
declare -A TPS=()
run=$(date -u +%s)
for round in $(seq 1 "$ROUNDS"); do
  for c in $CLIENTS; do
    for case in idem baseline; do
      for target in citus plain; do
        p=$PORT; [ $target = plain ] && p=$PLAIN_PORT
        run=$((run + 1))
        log "round $round: $case, $c clients, $target"
        "$PG_BINDIR/pgbench" -n -M prepared -h 127.0.0.1 -p "$p" -U postgres -c "$c" -j $((c < 2 ? c : 2)) \
          -T "$SECONDS_EACH" -D run="$run" -f "$ROOT/bench/pgbench/citus_$case.sql" bench \
          >"$BASE/pgbench-$case-$c-$target-$round.log" 2>&1 \
          || { cat "$BASE/pgbench-$case-$c-$target-$round.log" >&2; exit 1; }
        grep -q "number of failed transactions: 0 " "$BASE/pgbench-$case-$c-$target-$round.log" \
          || { cat "$BASE/pgbench-$case-$c-$target-$round.log" >&2; log "failed transactions"; exit 1; }
        tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$BASE/pgbench-$case-$c-$target-$round.log")
        TPS[$case,$c,$target]+="$tps "
      done
    done
  done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

{
  echo "# Scale-out: TPS through a Citus coordinator against one plain node"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $PG, $CITUS."
  echo "Coordinator and two workers and the plain node on this one machine (127.0.0.1), the same"
  echo "PostgreSQL and settings (fsync and synchronous_commit on). pgbench -M prepared, ${SECONDS_EACH} s"
  echo "per run, median of $ROUNDS interleaved rounds. Load average (1, 5, 15 min) at the start"
  echo "$LOAD_START, at the end $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shows here)."
  echo "Command: \`make bench-citus CITUS_PG_CONFIG=$CITUS_PG_CONFIG\`."
  echo
  echo "| case | clients | Citus TPS | plain TPS | Citus / plain |"
  echo "|---|---|---|---|---|"
  for case in idem baseline; do
    for c in $CLIENTS; do
      ct=$(median "${TPS[$case,$c,citus]}")
      pt=$(median "${TPS[$case,$c,plain]}")
      label="idempotent one-transaction payment"; [ $case = baseline ] && label="payment without idempotency"
      printf '| %s | %s | %.0f | %.0f | %.2f |\n' "$label" "$c" "$ct" "$pt" "$(awk -v a="$ct" -v b="$pt" 'BEGIN {print a / b}')"
    done
  done
  echo
  echo "Every run: 0 failed transactions (an idem_begin that Citus had not delegated to the scope's"
  echo "node would have been refused with 0A000)."
} >"$OUT"
cat "$OUT"
