#!/usr/bin/env bash
# What the shared-memory counters cost on the hot path (`make bench-counters`): instructions per
# request (idem_begin on a new key + idem_complete) counted by callgrind, with the counters
# (the library in shared_preload_libraries) and without them (the same library, not preloaded:
# every count finds no shared memory and returns), side by side in one run.
#
#   bash bench/counters.sh       (PG_BINDIR: the PostgreSQL; default the system 15)
#
# (single-user mode ends a statement at a newline: the loop is one line.)
# Each measurement is one single-user backend (`postgres --single`, no other process, so the
# count is the backend's alone) on a fresh copy of one data directory, running a DO block of
# N requests, each begin + complete in the block's one transaction. The cost of a request is
# (instructions at N2 - instructions at N1) / (N2 - N1): start-up, library loading and shared
# memory set-up cancel out. COUNTERS_N1/COUNTERS_N2 (default 1000/3000), COUNTERS_ROUNDS
# (default 2: every configuration and size runs that many times, interleaved; the median is
# kept). The extension must be installed into that PostgreSQL (the Makefile installs a release
# build). Results: build/bench/counters/results.txt.
set -euo pipefail
NAME=bench-counters
. "$(dirname "$0")/../scripts/lib.sh"
OUT=${COUNTERS_OUT:-$ROOT/build/bench/counters}
N1=${COUNTERS_N1:-1000}
N2=${COUNTERS_N2:-3000}
ROUNDS=${COUNTERS_ROUNDS:-2}

command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
require_installed

rm -rf "$OUT"
mkdir -p "$OUT"
d=$(dirname "$OUT")
while [ "$(id -u)" -eq 0 ] && [ "$d" != / ]; do
  sudo -u postgres test -x "$d" || chmod o+x "$d"
  d=$(dirname "$d")
done
[ "$(id -u)" -ne 0 ] || chown postgres: "$OUT"
as_owner "$PG_BINDIR/initdb" -D "$OUT/template" -U postgres -A trust -E UTF8 --locale=C >/dev/null
single() {  # DATADIR [postgres options...] < SQL
  local data=$1; shift
  as_owner "$PG_BINDIR/postgres" --single -D "$data" -c jit=off "$@" postgres >/dev/null
}
echo "CREATE EXTENSION idempotency;" | single "$OUT/template"

# One measurement: prints the instructions of the whole backend.
measure() {  # config n round
  local config=$1 n=$2 round=$3 data=$OUT/run-$1-$2-$3 preload=
  [ "$config" = counters ] && preload=idempotency
  as_owner cp -a "$OUT/template" "$data"
  # With the counters, the same backend then reads them (a constant cost, which cancels out).
  local check=
  [ "$config" = counters ] && check="SELECT executes_new, completions FROM idem_stats();"
  as_owner valgrind --tool=callgrind --callgrind-out-file="$data.callgrind" \
      "$PG_BINDIR/postgres" --single -D "$data" -c jit=off -c shared_preload_libraries="$preload" postgres \
      >"$data.out" 2>"$data.valgrind" <<SQL
DO \$\$ BEGIN FOR i IN 1..$n LOOP PERFORM idem_begin('cg', 'k-' || i, '{"amount": "10.00", "currency": "EUR"}'); PERFORM idem_complete('cg', 'k-' || i, resource => 'payments/' || i, http_status => 201); END LOOP; END \$\$;
$check
SQL
  if [ "$config" = counters ] && ! { grep -q "executes_new = \"$n\"" "$data.out" && grep -q "completions = \"$n\"" "$data.out"; }; then
    cat "$data.out" >&2; die "counters n=$n: idem_stats() did not count $n requests"
  fi
  # Check that the loop ran (each request left a completed record) and, for the counters
  # configuration, that it was counted.
  local got
  got=$(echo "SELECT count(*) FROM idempotency.records WHERE state = 'c';" | \
        as_owner "$PG_BINDIR/postgres" --single -D "$data" -c shared_preload_libraries="$preload" postgres 2>/dev/null \
        | sed -n 's/^[[:space:]]*1: count = "\([0-9]*\)".*/\1/p')
  [ "$got" = "$n" ] || { cat "$data.valgrind" >&2; die "$config n=$n: $got completed records, expected $n"; }
  as_owner rm -rf "$data" "$data.out"
  sed -n 's/^summary: \([0-9]*\).*/\1/p' "$data.callgrind"
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
declare -A IR
for round in $(seq 1 "$ROUNDS"); do
  for config in counters none; do
    for n in "$N1" "$N2"; do
      ir=$(measure "$config" "$n" "$round")
      log "round $round, $config, $n requests: $ir instructions"
      IR[$config-$n]="${IR[$config-$n]:-} $ir"
    done
  done
done
{
  echo "date_utc: $(date -u '+%Y-%m-%d %H:%M')"
  echo "postgres: $("$PG_BINDIR/postgres" --version)"
  echo "method: callgrind, postgres --single, DO loop of N x (idem_begin new key + idem_complete), one transaction; per request = (Ir(N2) - Ir(N1)) / (N2 - N1), N1=$N1 N2=$N2, median of $ROUNDS rounds"
  for config in counters none; do
    a=$(echo "${IR[$config-$N1]}" | median)
    b=$(echo "${IR[$config-$N2]}" | median)
    per=$(( (b - a) / (N2 - N1) ))
    echo "$config: $per instructions per request (Ir $a at $N1, $b at $N2)"
    eval "PER_$config=$per"
  done
  # shellcheck disable=SC2154
  echo "counters cost: $((PER_counters - PER_none)) instructions per request"
} | tee "$OUT/results.txt"
