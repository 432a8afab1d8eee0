#!/usr/bin/env bash
# What the loaded library costs the queries that are not its own (`make bench-guest`; `make
# test-guest-bench` at a tiny size): pgbench's select-only query (`pgbench -S`: one primary-key
# SELECT of pgbench_accounts) on one server build, in one run, under three configurations:
#   none     the library is not loaded
#   load     loaded into the session (LOAD 'idempotency': what the first call of one of its
#            functions does in a backend)
#   preload  shared_preload_libraries = 'idempotency' (what the README's Operations section
#            asks for: the counters' shared memory and the purge worker too)
# Two figures per configuration:
#   instructions per query, counted by callgrind in a single-user backend running N1 and then
#     N2 such queries as top-level statements (parsed, planned and executed each time, as
#     pgbench's simple protocol does); per query = (at N2 - at N1) / (N2 - N1), the medians
#     of INSTR_ROUNDS interleaved rounds (scripts/lib.sh, instruction counts);
#   pgbench -S TPS over TCP-less sockets, GUEST_CLIENTS clients for GUEST_SECONDS, the
#     configurations interleaved over GUEST_ROUNDS rounds on the same data directory
#     (restarted for each: shared_preload_libraries needs it); the median is kept.
# The ratios to `none` are the figures: the machine is shared and noisy, so only figures
# measured side by side in this one run are compared.
#
# Settings: INSTR_N1/INSTR_N2 (default 2000/6000), INSTR_ROUNDS (3), GUEST_CLIENTS (2),
# GUEST_SECONDS (10), GUEST_WARMUP (5: an unmeasured pgbench -S after each start), GUEST_ROUNDS (3), GUEST_SCALE (pgbench scale, 10), GUEST_OUT (default
# build/bench/guest), GUEST_COMMAND (printed with the results), PG_BINDIR (default the system 15). The extension must be installed into
# that PostgreSQL (the Makefile does it). Results: GUEST_OUT/results.md (printed).
set -euo pipefail
NAME=bench-guest
. "$(dirname "$0")/../scripts/lib.sh"
OUT=${GUEST_OUT:-$ROOT/build/bench/guest}
case "$OUT" in /*) ;; *) OUT=$ROOT/$OUT ;; esac
N1=${INSTR_N1:-2000}
N2=${INSTR_N2:-6000}
ROUNDS=${INSTR_ROUNDS:-3}
CLIENTS=${GUEST_CLIENTS:-2}
SECONDS_EACH=${GUEST_SECONDS:-10}
WARMUP=${GUEST_WARMUP:-5}
TPS_ROUNDS=${GUEST_ROUNDS:-3}
SCALE=${GUEST_SCALE:-10}
PORT=${TEST_PORT:-$(port_of bench-guest)}
CONFIGS="none load preload"
[ "$N2" -gt "$N1" ] || die "INSTR_N2 ($N2) must be larger than INSTR_N1 ($N1)"
START=$(date -u +%s)

require_installed
instr_outdir "$OUT"
DATA=$OUT/cluster
cluster_fresh "$DATA" "$PORT"
VERSION=$(sql "$DATA" "$PORT" postgres "SELECT version()")
log "pgbench -i -s $SCALE"
as_owner "$PG_BINDIR/pgbench" -i -q -s "$SCALE" -h "$DATA" -p "$PORT" -U "$SUPERUSER" postgres >/dev/null 2>&1 \
  || die "pgbench -i failed"
for s in "CREATE EXTENSION idempotency" "VACUUM ANALYZE" "CHECKPOINT"; do sql "$DATA" "$PORT" postgres "$s" >/dev/null; done
cluster_stop "$DATA"

# The server options of each configuration.
options() {
  case "$1" in
    none | load) ;;
    preload) echo "-c shared_preload_libraries=idempotency" ;;
  esac
}

# --- instructions per query ----------------------------------------------------------------------
ROWS=$((SCALE * 100000))
# N queries of pgbench -S's form, one per line, each a different account; `load` first loads
# the library as a session does.
queries() {
  local config=$1 n=$2
  [ "$config" != load ] || echo "LOAD 'idempotency'"
  awk -v n="$n" -v rows="$ROWS" 'BEGIN {
    for (i = 1; i <= n; i++) printf "SELECT abalance FROM pgbench_accounts WHERE aid = %d\n", (i * 7919) % rows + 1
  }'
}
measure() {  # CONFIG N ROUND
  local config=$1 n=$2
  # shellcheck disable=SC2046
  queries "$config" "$n" | callgrind_single "$DATA/data" $(options "$config")
}
# shellcheck disable=SC2086
instr_measure_all measure $CONFIGS

# --- pgbench -S TPS ------------------------------------------------------------------------------
declare -A TPS
for round in $(seq 1 "$TPS_ROUNDS"); do
  for config in $CONFIGS; do
    PGCLUSTER_SETTINGS=""
    [ "$config" != preload ] || PGCLUSTER_SETTINGS="shared_preload_libraries = 'idempotency'"
    PGCLUSTER_SETTINGS=$PGCLUSTER_SETTINGS cluster_start "$DATA" "$PORT"
    if [ "$config" = load ]; then
      # Every connection loads the library first, as a session that calls it once would.
      opt="-c session_preload_libraries=idempotency"
    else
      opt=""
    fi
    # A fresh start has empty shared buffers: warm them (and the connections' caches) first,
    # unmeasured, so that every configuration is measured warm.
    as_owner env PGOPTIONS="$opt" "$PG_BINDIR/pgbench" -S -n -c "$CLIENTS" -j "$CLIENTS" \
      -T "$WARMUP" -h "$DATA" -p "$PORT" -U "$SUPERUSER" postgres >/dev/null 2>&1 \
      || die "the warm-up pgbench -S failed ($config)"
    tps=$(as_owner env PGOPTIONS="$opt" "$PG_BINDIR/pgbench" -S -n -c "$CLIENTS" -j "$CLIENTS" \
            -T "$SECONDS_EACH" -h "$DATA" -p "$PORT" -U "$SUPERUSER" postgres 2>&1 \
          | sed -n 's/^tps = \([0-9]*\).*/\1/p' | head -1)
    [ -n "$tps" ] || die "pgbench -S gave no tps ($config)"
    log "round $round, $config: $tps tps"
    TPS[$config]="${TPS[$config]:-} $tps"
    cluster_stop "$DATA"
  done
done

# --- results -------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", a / b }'; }
{
  echo "# What the loaded library costs other queries (pgbench -S)"
  echo
  echo "$(date -u +%Y-%m-%d), $(nproc) cores, $VERSION; \`${GUEST_COMMAND:-bash bench/guest.sh}\`"
  echo "(instructions: N1=$N1, N2=$N2, $ROUNDS rounds; TPS: $CLIENTS clients, ${SECONDS_EACH}s after a ${WARMUP}s warm-up, $TPS_ROUNDS rounds, scale $SCALE)."
  echo
  echo "| configuration | instructions per query | ratio to none | pgbench -S TPS (median) | ratio to none |"
  echo "|---|---:|---:|---:|---:|"
  base_tps=$(echo "${TPS[none]}" | median)
  for config in $CONFIGS; do
    tps=$(echo "${TPS[$config]}" | median)
    echo "| $config | ${PER[$config]} | $(ratio "${PER[$config]}" "${PER[none]}") | $tps | $(ratio "$tps" "$base_tps") |"
  done
  echo
  echo "Every round's TPS: $(for c in $CONFIGS; do printf '%s:%s; ' "$c" "${TPS[$c]# }"; done)"
} >"$OUT/results.md"
cat "$OUT/results.md"
log "done in $(( $(date -u +%s) - START )) s"
