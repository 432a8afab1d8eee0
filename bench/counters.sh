#!/usr/bin/env bash
# What the shared-memory counters cost on the hot path (`make bench-counters`): instructions per
# request (idem_begin on a new key + idem_complete) counted by callgrind, with the counters
# (the library in shared_preload_libraries) and without them (the same library, not preloaded:
# every count finds no shared memory and returns), side by side in one run.
#
#   bash bench/counters.sh       (PG_BINDIR: the PostgreSQL; default the system 15)
#
# The method is scripts/lib.sh's (instruction counts): a single-user backend on a fresh copy of
# one data directory runs a DO block of N requests, each begin + complete in the block's one
# transaction; per request = (instructions at N2 - at N1) / (N2 - N1). COUNTERS_N1/COUNTERS_N2
# (default 1000/3000), COUNTERS_ROUNDS (default 2: every configuration and size runs that many
# times, interleaved; the median is kept). The extension must be installed into that PostgreSQL
# (the Makefile installs a release build). Results: build/bench/counters/results.txt.
set -euo pipefail
NAME=bench-counters
. "$(dirname "$0")/../scripts/lib.sh"
OUT=${COUNTERS_OUT:-$ROOT/build/bench/counters}
case "$OUT" in /*) ;; *) OUT=$ROOT/$OUT ;; esac
N1=${COUNTERS_N1:-1000}
N2=${COUNTERS_N2:-3000}
ROUNDS=${COUNTERS_ROUNDS:-2}

require_installed
instr_outdir "$OUT"
as_owner "$PG_BINDIR/initdb" -D "$OUT/template" -U postgres -A trust -E UTF8 --locale=C >/dev/null
echo "CREATE EXTENSION idempotency;" | single_user "$OUT/template" >/dev/null

# One measurement: prints the instructions of the whole backend.
measure() {  # config n round
  local config=$1 n=$2 round=$3 data=$OUT/run-$1-$2-$3 preload=
  [ "$config" = counters ] && preload=idempotency
  as_owner cp -a "$OUT/template" "$data"
  # With the counters, the same backend then reads them (a constant cost, which cancels out).
  local check= ir
  [ "$config" = counters ] && check="SELECT executes_new, completions FROM idem_stats();"
  ir=$(callgrind_single "$data" -c shared_preload_libraries="$preload" <<SQL
DO \$\$ BEGIN FOR i IN 1..$n LOOP PERFORM idem_begin('cg', 'k-' || i, '{"amount": "10.00", "currency": "EUR"}'); PERFORM idem_complete('cg', 'k-' || i, resource => 'payments/' || i, http_status => 201); END LOOP; END \$\$;
$check
SQL
  )
  if [ "$config" = counters ] && ! { grep -q "executes_new = \"$n\"" "$data.out" && grep -q "completions = \"$n\"" "$data.out"; }; then
    cat "$data.out" >&2; die "counters n=$n: idem_stats() did not count $n requests"
  fi
  # Check that the loop ran (each request left a completed record) and, for the counters
  # configuration, that it was counted.
  local got
  got=$(single_value "$data" "SELECT count(*) FROM idempotency.records WHERE state = 'c';" -c shared_preload_libraries="$preload")
  [ "$got" = "$n" ] || die "$config n=$n: $got completed records, expected $n"
  as_owner rm -rf "$data" "$data.out"
  echo "$ir"
}

instr_measure_all measure counters none
{
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M')"
  echo "postgres: $("$PG_BINDIR/postgres" --version)"
  echo "method: callgrind, postgres --single, DO loop of N x (idem_begin new key + idem_complete), one transaction; per request = (Ir(N2) - Ir(N1)) / (N2 - N1), N1=$N1 N2=$N2, median of $ROUNDS rounds"
  for config in counters none; do
    echo "$config: ${PER[$config]} instructions per request (Ir ${IR1[$config]} at $N1, ${IR2[$config]} at $N2)"
  done
  echo "counters cost: $((PER[counters] - PER[none])) instructions per request"
} | tee "$OUT/results.txt"
