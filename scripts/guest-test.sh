#!/usr/bin/env bash
# guest-test.sh: PostgreSQL's own regression suite (the parallel_schedule of the server's
# version) with the library in shared_preload_libraries, against the same suite without it.
# The library is a guest in other people's databases: loaded, it must change nothing that
# PostgreSQL's own tests can see, and crash nothing (a hook that turns a planning ERROR into
# a Rust panic aborts the backend, and the postmaster restarts the whole cluster).
#
#   bash scripts/guest-test.sh                              the system PostgreSQL 15
#   PG_BINDIR=/path/to/bin bash scripts/guest-test.sh       another server (the extension
#                                                           installed there: make install)
#
# Runs, each on a fresh scratch cluster of its own (build/guest/RUN, port_of guest + 0..4):
#   A  nothing preloaded                      B  idempotency           (compared with A)
#   C  pg_stat_statements                     D  pg_stat_statements,idempotency  (with C)
#                                             E  idempotency,pg_stat_statements  (with C)
# C, D and E run only when the server has pg_stat_statements: they chain the library's hooks
# after and before another extension's. It passes when each pair fails the same tests with the
# same diffs (the output directory in the diffs' headers and their timestamps aside), no server
# log shows a crash (a signal, a Rust abort, PANIC, a failed assertion) or a leak WARNING
# (LOG_CRASH_RE and LOG_LEAK_RE in scripts/lib.sh), and no process made
# DROP DATABASE or DROP TABLESPACE wait for it (PostgreSQL logs a ProcSignalBarrier that is
# not absorbed within 5 s). A test that fails in both runs of a pair alike (e.g. a server of
# another minor version than the suite's source) is the server's business, not ours. On
# failure it prints the differing tests with excerpts of their diffs, and the log lines.
#
# pg_regress and regress.so are built from the upstream source of the server's major version
# (scripts/pg-source.sh), out of tree, in ${IDEM_CACHE:-/var/cache/idempotency}/pg-regress/,
# one build per version and pg_config, kept for later runs.
#
# Settings: GUEST_RUNS (the runs, default "A B C D E", or "A B" without pg_stat_statements),
# GUEST_JOBS (runs at once, default 1: on 2 cores two at once saved little and loads the
# timing-sensitive tests more; docs/testing.md has the figures), TEST_PORT_BASE, TEST_DIR and
# TEST_PORT (the first run's port; the others follow), IDEM_CACHE.
set -euo pipefail
NAME=guest-test
. "$(dirname "$0")/lib.sh"

pg_config=$PG_BINDIR/pg_config
[ -x "$pg_config" ] || die "no pg_config in PG_BINDIR=$PG_BINDIR"
require_installed
version=$("$pg_config" --version)
ver=$(sed -n 's/^PostgreSQL \([0-9][0-9.]*\).*/\1/p' <<<"$version")
major=${ver%%.*}
[ -n "$major" ] || die "cannot read the version from '$version'"
src=$(bash "$ROOT/scripts/pg-source.sh" "$major")
srcver=${src##*/postgresql-}
[ "$srcver" = "$ver" ] || log "note: the server is $ver, the suite $srcver's: a test that changed" \
  "between them fails in every run alike, and the pairs still compare"
pkglibdir=$("$pg_config" --pkglibdir)

# --- pg_regress and regress.so -----------------------------------------------------------------
# Built out of tree, from a configure with only what they need (no readline, zlib or ICU),
# but with assertions when the server has them, so that regress.so's checks match its.
cache=${IDEM_CACHE:-/var/cache/idempotency}/pg-regress
key=$(printf '%s\n' "$(realpath "$pg_config")" "$version" "$("$pg_config" --configure)" \
  | sha256sum | cut -c1-12)
build=$cache/$srcver-$key
mkdir -p "$cache"
(
  # One build at a time per server, however many checkouts run this.
  flock 9
  [ -f "$build/.built" ] && exit 0
  # PostgreSQL 17 and later ship no generated parser in the tarball: bison and flex make it.
  if [ ! -f "$src/src/backend/parser/gram.c" ] && ! command -v bison >/dev/null; then
    [ "$(id -u)" -eq 0 ] || die "bison and flex are missing (apt-get install bison flex)"
    log "installing bison and flex (the $srcver tarball has no generated parser)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bison flex >/dev/null
  fi
  opts=(--without-readline --without-zlib --without-icu)
  case "$("$pg_config" --configure)" in *--enable-cassert*) opts+=(--enable-cassert) ;; esac
  log "building pg_regress and regress.so of $srcver into $build (about 2 minutes; once)"
  rm -rf "$build"
  mkdir -p "$build"
  # The generated headers first: src/port, which pg_regress needs, does not wait for them, so
  # a parallel make can compile it before errcodes.h exists.
  if ! (cd "$build" && "$src/configure" "${opts[@]}" \
    && make -j"$(nproc)" -C src/backend generated-headers \
    && make -j"$(nproc)" -C src/test/regress) >"$build.log" 2>&1; then
    tail -n 40 "$build.log" >&2
    die "building pg_regress failed (log: $build.log)"
  fi
  touch "$build/.built"
) 9>"$build.lock"
regress_build=$build/src/test/regress
regress_src=$src/src/test/regress

# --- the runs ------------------------------------------------------------------------------------
declare -A PRELOAD=([A]="" [B]=idempotency [C]=pg_stat_statements
  [D]=pg_stat_statements,idempotency [E]=idempotency,pg_stat_statements)
declare -A BASE=([B]=A [D]=C [E]=C)
if [ -n "${GUEST_RUNS:-}" ]; then
  read -ra runs <<<"$GUEST_RUNS"
elif [ -f "$pkglibdir/pg_stat_statements.so" ]; then
  runs=(A B C D E)
else
  log "no pg_stat_statements in $pkglibdir: runs A and B only"
  runs=(A B)
fi
for r in "${runs[@]}"; do
  [ -n "${PRELOAD[$r]+x}" ] || die "GUEST_RUNS: no run '$r' (A B C D E)"
  [ -z "${BASE[$r]:-}" ] || [[ " ${runs[*]} " == *" ${BASE[$r]} "* ]] \
    || die "GUEST_RUNS: run $r is compared with ${BASE[$r]}, which is not in it"
done

scratch guest
base_port=$PORT
index() { case "$1" in A) echo 0 ;; B) echo 1 ;; C) echo 2 ;; D) echo 3 ;; E) echo 4 ;; esac; }

# Fresh clusters, one per run, all started before the first run (each is stopped at exit).
# fsync is off: scratch data that nothing reads after a crash of the machine, and the suite
# writes a lot. compute_query_id = regress: pg_stat_statements turns query ids on, EXPLAIN
# VERBOSE would print them, and they hash OIDs, which differ from run to run; `regress` is
# PostgreSQL's own setting for running its suite so (ids computed, not printed). Every run has
# it, so that the runs differ in shared_preload_libraries alone.
for r in "${runs[@]}"; do
  PGCLUSTER_SETTINGS="fsync = off
compute_query_id = regress
shared_preload_libraries = '${PRELOAD[$r]}'" \
    cluster_fresh "$DIR/$r" $((base_port + $(index "$r")))
  got=$(sql "$DIR/$r" $((base_port + $(index "$r"))) postgres "SHOW shared_preload_libraries")
  expect_eq "run $r: shared_preload_libraries" "$got" "${PRELOAD[$r]}"
done

# run_schedule RUN: the parallel_schedule against RUN's cluster, as the clusters' owner (the
# server writes files into the output directory: COPY TO of the copy tests). Its output in
# DIR/RUN/pg_regress.out, its time in DIR/RUN/seconds. pg_regress's status is not the verdict
# (a server of another minor version fails some tests in every run): the comparison is.
run_schedule() {
  local r=$1 dir=$DIR/$1 start
  rm -rf "$dir/out"
  mkdir -p "$dir/out"
  _cluster_make_accessible "$dir/out"
  start=$(date +%s)
  as_owner "$regress_build/pg_regress" --inputdir="$regress_src" --outputdir="$dir/out" \
    --bindir="$PG_BINDIR" --dlpath="$regress_build" --host="$dir" \
    --port=$((base_port + $(index "$r"))) --user="$SUPERUSER" --max-concurrent-tests=20 \
    --schedule="$regress_src/parallel_schedule" >"$dir/pg_regress.out" 2>&1 || true
  echo $(($(date +%s) - start)) >"$dir/seconds"
}

jobs=${GUEST_JOBS:-1}
started=$(date +%s)
running=0
for r in "${runs[@]}"; do
  if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
  log "run $r: the parallel_schedule with shared_preload_libraries = '${PRELOAD[$r]}'"
  run_schedule "$r" &
  running=$((running + 1))
done
wait
total=$(($(date +%s) - started))

# --- the verdict ---------------------------------------------------------------------------------

# split_diffs RUN: DIR/RUN/diffs/TEST.diff for each failing test, its part of regression.diffs
# with what differs between two runs of the same suite removed: the output directory in the
# headers, and the files' timestamps after them. Then DIR/RUN/failed lists the failing tests:
# those with a diff and those pg_regress calls failed (a test whose psql died may have none).
split_diffs() {
  local dir=$DIR/$1
  rm -rf "$dir/diffs"
  mkdir -p "$dir/diffs"
  if [ -f "$dir/out/regression.diffs" ]; then
    awk -v out="$dir/out/" -v dest="$dir/diffs" '
      /^diff / { f = $NF; sub(/.*\//, "", f); sub(/\.out$/, "", f); file = dest "/" f ".diff" }
      /^(diff|\+\+\+|---) / {
        while ((i = index($0, out)) > 0) $0 = substr($0, 1, i - 1) "<out>/" substr($0, i + length(out))
        sub(/\t.*/, "")
      }
      file != "" { print > file }' "$dir/out/regression.diffs"
  fi
  {
    ls "$dir/diffs" | sed 's/\.diff$//'
    # pg_regress 15: "test NAME ... FAILED" or "     NAME ... FAILED"; 16 and later (TAP):
    # "not ok N - NAME" or "not ok N + NAME".
    sed -nE 's/^(test| ) +([^ ]+) +\.\.\. FAILED.*/\2/p; s/^not ok [0-9]+ +[-+] +([^ ]+).*/\1/p' \
      "$dir/pg_regress.out"
  } | sort -u >"$dir/failed"
}

# crashes RUN: the crash lines of RUN's server log (what scripts/lib.sh calls a crash or a
# leak in any server log, and a backend killed by any signal: nobody sends one here); the
# restarts in RESTARTS[RUN].
CRASH="$LOG_CRASH_RE|$LOG_LEAK_RE|server process .* was terminated"
declare -A RESTARTS
crashes() {
  RESTARTS[$1]=$(grep -c 'all server processes terminated; reinitializing' "$DIR/$1/server.log" || true)
  grep -E "$CRASH" "$DIR/$1/server.log" || true
}

# stalls RUN: the lines of RUN's server log where a backend waited 5 s and more for another
# process to absorb a ProcSignalBarrier (DROP DATABASE and DROP TABLESPACE send one, and wait
# for every process). A process that sleeps without absorbing it makes them hang: no diff
# shows it, since the test passes once the process wakes.
STALL='still waiting for backend with PID [0-9]+ to accept ProcSignalBarrier'
stalls() { grep -E "$STALL" "$DIR/$1/server.log" || true; }

failed=0
declare -A CRASHES STALLS
for r in "${runs[@]}"; do
  split_diffs "$r"
  crashes "$r" >"$DIR/$r/crashes"
  CRASHES[$r]=$(grep -c . "$DIR/$r/crashes" || true)
  stalls "$r" >"$DIR/$r/stalls"
  STALLS[$r]=$(grep -c . "$DIR/$r/stalls" || true)
done

report=$DIR/summary.txt
{
  printf 'PostgreSQL %s (%s), regression suite of %s\n' "$ver" "$pg_config" "$srcver"
  printf '%-3s %-34s %8s %7s %12s %9s %7s\n' run shared_preload_libraries seconds failed \
    "crash lines" restarts stalls
  for r in "${runs[@]}"; do
    printf '%-3s %-34s %8s %7s %12s %9s %7s\n' "$r" "'${PRELOAD[$r]}'" "$(cat "$DIR/$r/seconds")" \
      "$(grep -c . "$DIR/$r/failed" || true)" "${CRASHES[$r]}" "${RESTARTS[$r]}" "${STALLS[$r]}"
  done
  printf 'total %s s (%s run(s) at once)\n' "$total" "$jobs"
} >"$report"
cat "$report" >&2

for r in "${runs[@]}"; do
  if [ "${CRASHES[$r]}" -gt 0 ]; then
    log "FAILED: run $r's server crashed (${CRASHES[$r]} lines, ${RESTARTS[$r]} restarts); the first:"
    head -n 10 "$DIR/$r/crashes" >&2
    failed=1
  fi
  if [ "${STALLS[$r]}" -gt 0 ]; then
    log "FAILED: in run $r a process ignored a ProcSignalBarrier for 5 s and more (${STALLS[$r]} lines); the first:"
    head -n 10 "$DIR/$r/stalls" >&2
    # Name the process: its pid's first line in the log says what it is, if it logged one.
    for pid in $(sed -nE 's/.*backend with PID ([0-9]+) .*/\1/p' "$DIR/$r/stalls" | sort -u); do
      grep -m1 -F "[$pid] " "$DIR/$r/server.log" | sed 's/^/  that process: /' >&2 || true
    done
    failed=1
  fi
done

for r in "${runs[@]}"; do
  b=${BASE[$r]:-}
  [ -n "$b" ] || continue
  differ=()
  while read -r t; do
    if [ ! -f "$DIR/$r/diffs/$t.diff" ] && [ ! -f "$DIR/$b/diffs/$t.diff" ]; then
      # Failed in one run without a diff (pg_regress's status alone): the lists differ.
      grep -qx "$t" "$DIR/$r/failed" && grep -qx "$t" "$DIR/$b/failed" || differ+=("$t")
    elif ! cmp -s "$DIR/$r/diffs/$t.diff" "$DIR/$b/diffs/$t.diff" 2>/dev/null; then
      differ+=("$t")
    fi
  done < <(sort -u "$DIR/$r/failed" "$DIR/$b/failed")
  if [ ${#differ[@]} -eq 0 ]; then
    log "run $r is run $b's: $(grep -c . "$DIR/$r/failed" || true) failing test(s), the same diffs"
    continue
  fi
  failed=1
  log "FAILED: run $r ('${PRELOAD[$r]}') differs from run $b ('${PRELOAD[$b]}') in ${#differ[@]} test(s): ${differ[*]}"
  for t in "${differ[@]:0:10}"; do
    if [ ! -f "$DIR/$b/diffs/$t.diff" ]; then
      printf '\n===== %s: fails in run %s only; its diff (first 30 lines):\n' "$t" "$r" >&2
      head -n 30 "$DIR/$r/diffs/$t.diff" >&2 2>/dev/null || echo "(no diff: see $DIR/$r/pg_regress.out)" >&2
    elif [ ! -f "$DIR/$r/diffs/$t.diff" ]; then
      printf '\n===== %s: fails in run %s only; its diff (first 30 lines):\n' "$t" "$b" >&2
      head -n 30 "$DIR/$b/diffs/$t.diff" >&2
    else
      printf '\n===== %s: fails in both, differently; run %s'"'"'s diff against run %s'"'"'s (first 30 lines):\n' \
        "$t" "$b" "$r" >&2
      diff "$DIR/$b/diffs/$t.diff" "$DIR/$r/diffs/$t.diff" | head -n 30 >&2 || true
    fi
  done
  [ ${#differ[@]} -le 10 ] || log "(the first 10 of ${#differ[@]}; all in $DIR/$r/diffs and $DIR/$b/diffs)"
done

[ "$failed" -eq 0 ] || die "see above; the runs' output is in $DIR/<run>/ (out/regression.diffs, server.log)"
log "passed: ${runs[*]} in $total s"
