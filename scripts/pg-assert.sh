#!/usr/bin/env bash
# The extension on a PostgreSQL 18 built with assertions (`make test-assert`). The release
# builds that every other suite uses have no Assert(), no memory-context checking and no
# clobbering of freed memory: a wrong call into PostgreSQL (a lock wait without a row, a
# pfree of the wrong pointer, a missed pin release) passes there and traps here.
#
#   scripts/pg-assert.sh build          PostgreSQL 18 with assertions (cached); prints its pg_config
#   scripts/pg-assert.sh install        build, then the extension's debug build installed into it
#   scripts/pg-assert.sh run [SUITE...] install, then the suites (default: all of SUITES below),
#                                       then every server log of their clusters checked
#
# The build: PostgreSQL's upstream source of 18 (scripts/pg-source.sh 18), configured out of tree
# with --enable-cassert --enable-debug and nothing optional (no ICU, readline, zlib: none of the
# suites needs them), CFLAGS=-O1, `make -j$(nproc)`, installed with the contrib modules the
# suites use into ${IDEM_CACHE:-/var/cache/idempotency}/pg18-assert/<version>-<key>, where key
# is a hash of the version, the options, CFLAGS and the modules: a later run on this machine
# (any checkout) reuses it, a change of any of them builds another. Two processes building at
# once are serialised by a lock (flock) in that directory.
# Why -O1: the build is paid once per machine, the suites on every run. At -O0 the server
# runs the suites far slower; -O2 compiles about twice as long as -O1 (gcc 12, five of the
# backend's largest files: -O0 2.5 s, -Og 5.8 s, -O1 9.0 s, -O2 16.9 s) for a small gain at
# run time next to what the assertions cost; -O1 keeps most variables visible in a core.
#
# The extension: pgrx builds against the PostgreSQL registered as pg18 in its config, where
# scripts/pg-matrix.sh registers the PyPI 18. Rather than fight over that slot, this build has
# its own PGRX_HOME (build/pg-assert/pgrx, registering only this pg18) and its own target
# directory (target/pg-assert): with one shared target directory the two pg18 builds would
# rebuild pgrx-pg-sys each time the other ran, and pgrx would not even notice a PGRX_HOME
# change (its build script watches the config file by path). The install itself is the one
# every suite uses (scripts/lib.sh install, debug build).
#
# The run: each suite is one of the repository's own scripts, pointed at this server with
# PG_BINDIR, in a cluster directory of its own under build/assert (TEST_DIR) on port_of assert
# (TEST_PORT; guest's runs take the next ports too, ops's replica the next one). A suite's
# failure does not stop the others. Then check_server_logs (scripts/lib.sh) reads every
# server.log of the clusters those suites started (build/assert/SUITE/...): a TRAP (failed
# assertion), a signal, a PANIC, a Rust abort or a leak WARNING fails the run, printed with
# its file and line, whatever the suites themselves said. Times go to build/assert/times.tsv.
# Settings: GUEST_RUNS (scripts/guest-test.sh's runs; default all five: PostgreSQL's own
# regression suite without and with the library preloaded, and pg_stat_statements alone,
# before and after it, 21 to 25 s each here), ASSERT_TORTURE (the torture load's options),
# IDEM_CACHE, TEST_PORT_BASE.
set -euo pipefail
NAME=pg-assert
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

MAJOR=18
CONFIGURE=(--enable-cassert --enable-debug --without-icu --without-readline --without-zlib)
CFLAGS_ASSERT=-O1
# amcheck: tests/regress (access_paths, records_storage) and the torture run's last check;
# pg_stat_statements: scripts/guest-test.sh's runs C..E, whose hooks chain with ours.
CONTRIB=(amcheck pg_stat_statements)
CACHE=${IDEM_CACHE:-/var/cache/idempotency}/pg18-assert
OUT=$ROOT/build/assert
ASSERT_PGRX_HOME=$ROOT/build/pg-assert/pgrx
ASSERT_TARGET=$ROOT/target/pg-assert
ASSERT_TORTURE=${ASSERT_TORTURE:---connections 32 --requests 10000 --keys 16}

SUITES=(
  # PostgreSQL's own regression suite, without and with shared_preload_libraries = idempotency
  # (and chained with pg_stat_statements, before and after it)
  "guest|bash scripts/guest-test.sh"
  "regress|bash scripts/regress.sh"
  "regress-sql|IDEM_ACCESS=sql bash scripts/regress.sh"
  "isolation|bash scripts/isolation.sh"
  "isolation-sql|IDEM_ACCESS=sql bash scripts/isolation.sh"
  "torture|bash scripts/torture.sh load $ASSERT_TORTURE"
  "torture-sql|IDEM_ACCESS=sql bash scripts/torture.sh load $ASSERT_TORTURE"
  # the purge worker, counters, settings, SIGHUP, kill -9, a standby (preloaded)
  "ops|bash scripts/ops-test.sh"
  # ops-test.sh does not read IDEM_ACCESS: access_path_options puts the setting into the
  # configuration of the clusters it starts, so its clients take the SQL path too (the
  # purge worker always does)
  "ops-sql|IDEM_ACCESS=sql access_path_options && bash scripts/ops-test.sh"
)

# build: PostgreSQL 18 with assertions in the cache; sets PG_CONFIG_ASSERT.
cmd_build() {
  local src ver key prefix build t0 secs
  src=$(bash scripts/pg-source.sh "$MAJOR")
  ver=${src##*/postgresql-}
  key=$(printf '%s\n' "$ver" "${CONFIGURE[*]}" "CFLAGS=$CFLAGS_ASSERT" "contrib: ${CONTRIB[*]}" \
    | sha256sum | cut -c1-12)
  prefix=$CACHE/$ver-$key
  PG_CONFIG_ASSERT=$prefix/bin/pg_config
  # Installed trees are complete once .built exists (written last): no lock needed to use one.
  if [ ! -f "$prefix/.built" ]; then
    mkdir -p "$CACHE" || die "cannot create $CACHE (run as root, or set IDEM_CACHE)"
    exec 8>"$CACHE/.lock"
    flock 8
    if [ ! -f "$prefix/.built" ]; then
      # 17 and later ship no generated parser in the tarball: bison and flex make it.
      if ! command -v bison >/dev/null || ! command -v flex >/dev/null; then
        [ "$(id -u)" -eq 0 ] || die "bison and flex are missing (apt-get install bison flex)"
        log "installing bison and flex (the $ver tarball has no generated parser)"
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq bison flex >/dev/null \
          || { apt-get -o DPkg::Lock::Timeout=300 update -qq \
               && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq bison flex >/dev/null; }
      fi
      build=$CACHE/build-$ver-$key
      log "building PostgreSQL $ver with assertions into $prefix (${CONFIGURE[*]} CFLAGS=$CFLAGS_ASSERT; log: $prefix.log)"
      rm -rf "$build" "$prefix"
      mkdir -p "$build"
      t0=$(date +%s)
      # Out of tree: the source is shared by every checkout (scripts/pg-source.sh).
      if ! (cd "$build" \
        && "$src/configure" --prefix="$prefix" "${CONFIGURE[@]}" CFLAGS="$CFLAGS_ASSERT" \
        && make -j"$(nproc)" \
        && make install \
        && for m in "${CONTRIB[@]}"; do make -j"$(nproc)" -C "contrib/$m" install || exit 1; done) \
        >"$prefix.log" 2>&1; then
        tail -n 40 "$prefix.log" >&2
        die "building PostgreSQL $ver failed (log: $prefix.log)"
      fi
      secs=$(($(date +%s) - t0))
      rm -rf "$build"
      # The clusters run as the postgres user: everything must be readable by it.
      chmod -R a+rX "$prefix"
      printf 'PostgreSQL %s, %s CFLAGS=%s, contrib: %s\nbuilt in %s s on %s, %s\n' "$ver" \
        "${CONFIGURE[*]}" "$CFLAGS_ASSERT" "${CONTRIB[*]}" "$secs" "$(date -u +%FT%TZ)" "$(hostname)" \
        >"$prefix/.built"
      log "built PostgreSQL $ver with assertions in $secs s"
    fi
    flock -u 8
  fi
  "$PG_CONFIG_ASSERT" --configure | grep -q -- --enable-cassert \
    || die "$PG_CONFIG_ASSERT is not an assert-enabled build"
}

# install: the extension's debug build into the assert build, with pgrx's own PGRX_HOME.
cmd_install() {
  cmd_build
  # Only for these two commands: the suites' own cargo builds (the torture client) stay in
  # target/ with the user's PGRX_HOME.
  if ! grep -qsx "pg$MAJOR = \"$PG_CONFIG_ASSERT\"" "$ASSERT_PGRX_HOME/config.toml"; then
    log "registering $PG_CONFIG_ASSERT as pg$MAJOR in $ASSERT_PGRX_HOME/config.toml"
    mkdir -p "$ASSERT_PGRX_HOME"
    PGRX_HOME=$ASSERT_PGRX_HOME cargo pgrx init "--pg$MAJOR" "$PG_CONFIG_ASSERT" >&2
  fi
  PGRX_HOME=$ASSERT_PGRX_HOME CARGO_TARGET_DIR=$ASSERT_TARGET \
    bash scripts/lib.sh install "$PG_CONFIG_ASSERT" debug
}

cmd_run() {
  local t_all t0 secs rc s name cmd times failed=() logs_rc=0 dirs=()
  t_all=$(date +%s)
  [ $# -gt 0 ] || for s in "${SUITES[@]}"; do set -- "$@" "${s%%|*}"; done
  mkdir -p "$OUT"
  times=$OUT/times.tsv
  : >"$times"
  t0=$(date +%s)
  cmd_build
  printf '%s\t%s\t%s\n' build-postgresql $(($(date +%s) - t0)) "$(tail -n1 "$(dirname "$PG_CONFIG_ASSERT")/../.built")" >>"$times"
  t0=$(date +%s)
  cmd_install
  printf '%s\t%s\t%s\n' install $(($(date +%s) - t0)) ok >>"$times"
  export PG_BINDIR PG_CONFIG=$PG_CONFIG_ASSERT TEST_PORT
  PG_BINDIR=$(dirname "$PG_CONFIG_ASSERT")
  TEST_PORT=$(port_of assert)
  log "PostgreSQL: $("$PG_CONFIG" --version), $("$PG_CONFIG" --configure)"
  for name in "$@"; do
    cmd=
    for s in "${SUITES[@]}"; do [ "${s%%|*}" != "$name" ] || cmd=${s#*|}; done
    [ -n "$cmd" ] || die "no suite '$name' (suites: $(for s in "${SUITES[@]}"; do printf '%s ' "${s%%|*}"; done))"
    # A fresh directory per suite: its server logs hold this run's lines only.
    rm -rf "${OUT:?}/$name"
    log "suite $name"
    t0=$(date +%s)
    rc=0
    TEST_DIR=$OUT/$name bash -c "set -euo pipefail; . scripts/lib.sh; NAME=$name; $cmd" || rc=$?
    secs=$(($(date +%s) - t0))
    printf '%s\t%s\t%s\n' "$name" "$secs" "$([ $rc = 0 ] && echo ok || echo FAILED)" >>"$times"
    [ $rc = 0 ] || failed+=("$name")
  done
  log "the server logs of every cluster the suites started (under $OUT)"
  t0=$(date +%s)
  for name in "$@"; do [ ! -d "$OUT/$name" ] || dirs+=("$OUT/$name"); done
  check_server_logs "${dirs[@]}" || logs_rc=$?
  printf '%s\t%s\t%s\n' check-logs $(($(date +%s) - t0)) "$([ $logs_rc = 0 ] && echo ok || echo FAILED)" >>"$times"
  printf '%s\t%s\t%s\n' total $(($(date +%s) - t_all)) "$([ ${#failed[@]} = 0 ] && [ $logs_rc = 0 ] && echo ok || echo FAILED)" >>"$times"
  printf '\n%-16s %8s  %s\n' step seconds status >&2
  while IFS=$'\t' read -r name secs s; do printf '%-16s %8s  %s\n' "$name" "$secs" "$s" >&2; done <"$times"
  [ $logs_rc = 0 ] || failed+=("server logs")
  [ ${#failed[@]} = 0 ] || die "failed: ${failed[*]}"
  log "every suite passed on $("$PG_CONFIG" --version) with assertions; no server log shows a crash or a leak"
}

case "${1:-}" in
  build) cmd_build; echo "$PG_CONFIG_ASSERT" ;;
  install) cmd_install ;;
  run) shift; cmd_run "$@" ;;
  *) sed -n '7,10p' "$0" >&2; exit 2 ;;
esac
