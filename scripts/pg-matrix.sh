#!/usr/bin/env bash
# The PostgreSQL version matrix: builds the extension for PostgreSQL 13..18 and runs every
# per-version suite on each, timing each step.
#
#   scripts/pg-matrix.sh init              register every version with `cargo pgrx init`
#   scripts/pg-matrix.sh run [MAJOR...]    init, then run the suites on each MAJOR
#                                          (default: all of MATRIX_VERSIONS)
#
# `make test-matrix` runs `run`. Versions come from:
#   15       PG15_CONFIG (default: the system PostgreSQL 15, as in scripts/setup.sh), so
#            `make test` and the matrix share one registration;
#   others   scripts/pg-fetch.sh MAJOR (private relocatable builds under build/pg/MAJOR).
# Settings (environment):
#   MATRIX_VERSIONS     versions for `run` without arguments (default "13 14 15 16 17 18";
#                       the Makefile passes "13 14 16 17 18": make test runs 15 itself)
#   MATRIX_SQL_VERSIONS the versions whose *-sql suites (the store's SQL path) run (default
#                       "15 18"): the SQL path is the same statements through SPI on every
#                       version, the direct path is what follows each version's heap and
#                       index code; make check runs both paths on 15, make test-assert on 18
#   PG15_CONFIG         pg_config of the PostgreSQL 15 to use (see above)
#   TEST_PORT_BASE      the scratch clusters of version N listen on TEST_PORT_BASE + 70 + N
#                       (scripts/lib.sh; default 54330, so 54413..54418)
#   PGRX_HOME           where cargo-pgrx keeps its config (default ~/.pgrx)
# init is idempotent: it rewrites pgrx's config only when a version's pg_config differs.
# Timings go to build/matrix/times.tsv (version, suite, seconds, status) and are printed.
#
# A suite is one line in SUITES below: "name|command". The command runs from the repo root
# with PG_MAJOR, PG_CONFIG, PG_BINDIR and TEST_PORT exported for the version under test, each
# suite in a cluster directory of its own under build/matrix.
set -euo pipefail
NAME=matrix
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

SUITES=(
  # the #[pg_test]s inside one backend (cargo pgrx test pgN installs a test build into that version)
  "pg_test|PG=pg\$PG_MAJOR bash scripts/pgrx-test.sh"
  # the build that the suites below test, installed into that version
  "install|bash scripts/lib.sh install \"\$PG_CONFIG\" debug"
  # the pg_isolation_regress specs against a scratch cluster of that version
  "isolation|TEST_DIR=build/matrix/iso\$PG_MAJOR bash scripts/isolation.sh"
  # the same on the store's SQL path (idempotency.direct_access off): the same expected output
  "isolation-sql|TEST_DIR=build/matrix/iso\$PG_MAJOR IDEM_ACCESS=sql bash scripts/isolation.sh"
  # the frozen fingerprint vectors over a client connection
  "vectors|TEST_DIR=build/matrix/vec\$PG_MAJOR bash scripts/vectors.sh"
  # the pg_regress files, then no crashed backend
  "regress|TEST_DIR=build/matrix/reg\$PG_MAJOR bash scripts/regress.sh"
  "regress-sql|TEST_DIR=build/matrix/reg\$PG_MAJOR IDEM_ACCESS=sql bash scripts/regress.sh"
  # from every kept release to this one with ALTER EXTENSION UPDATE
  "upgrade|TEST_DIR=build/matrix/upg\$PG_MAJOR bash scripts/upgrade-test.sh"
  # preloaded: the purge worker, counters, settings placed unchecked, a standby, crashes
  "ops|TEST_DIR=build/matrix/ops\$PG_MAJOR bash scripts/ops-test.sh"
)

MATRIX_VERSIONS=${MATRIX_VERSIONS:-"13 14 15 16 17 18"}
MATRIX_SQL_VERSIONS=${MATRIX_SQL_VERSIONS:-"15 18"}
PG15_CONFIG=${PG15_CONFIG:-$SYSTEM_PG_BINDIR/pg_config}
PGRX_CONFIG=${PGRX_HOME:-$HOME/.pgrx}/config.toml
OUT=$ROOT/build/matrix

pg_config_of() {
  if [ "$1" = 15 ]; then echo "$PG15_CONFIG"; else bash scripts/pg-fetch.sh "$1"; fi
}

cmd_init() {
  local v pgc port args=() stale=0
  for v in 13 14 15 16 17 18; do
    pgc=$(pg_config_of "$v")
    [ -x "$pgc" ] || die "no pg_config for PostgreSQL $v at $pgc"
    args+=("--pg$v" "$pgc")
    grep -qsx "pg$v = \"$pgc\"" "$PGRX_CONFIG" || stale=1
  done
  port=$(sed -n 's/^base_testing_port *= *\([0-9]*\)$/\1/p' "$PGRX_CONFIG" 2>/dev/null || true)
  [ -z "$port" ] || args+=(--base-testing-port "$port")
  if [ $stale = 1 ]; then
    log "registering PostgreSQL 13..18 with cargo pgrx init (${PGRX_CONFIG})"
    mkdir -p "$(dirname "$PGRX_CONFIG")"
    cargo pgrx init "${args[@]}" >&2
  fi
}

cmd_run() {
  [ $# -gt 0 ] || set -- $MATRIX_VERSIONS
  cmd_init
  mkdir -p "$OUT"
  local times=$OUT/times.tsv v s name cmd t0 secs rc failed=()
  : >"$times"
  for v in "$@"; do
    export PG_MAJOR=$v PG_CONFIG PG_BINDIR TEST_PORT
    TEST_PORT=$(port_of matrix "$v")
    PG_CONFIG=$(pg_config_of "$v")
    PG_BINDIR=$(dirname "$PG_CONFIG")
    # The PyPI build of 13 has pg_regress but no pg_isolation_regress/isolationtester: use
    # 14's client programs against the 13 server (the wire protocol and
    # pg_isolation_test_session_is_blocked() are the same; the output format is the client's).
    unset PG_ISOLATION_REGRESS
    if [ "$v" = 13 ]; then
      export PG_ISOLATION_REGRESS
      PG_ISOLATION_REGRESS=$(dirname "$(bash scripts/pg-fetch.sh 14)")/../lib/pgxs/src/test/isolation/pg_isolation_regress
    fi
    log "PostgreSQL $v: $("$PG_CONFIG" --version)"
    for s in "${SUITES[@]}"; do
      name=${s%%|*}; cmd=${s#*|}
      case "$name" in *-sql) [[ " $MATRIX_SQL_VERSIONS " == *" $v "* ]] || continue ;; esac
      log "PostgreSQL $v: $name"
      t0=$(date +%s)
      rc=0; bash -c "set -euo pipefail; $cmd" || rc=$?
      secs=$(( $(date +%s) - t0 ))
      printf '%s\t%s\t%s\t%s\n' "$v" "$name" "$secs" "$([ $rc = 0 ] && echo ok || echo FAILED)" >>"$times"
      [ $rc = 0 ] || failed+=("pg$v/$name")
    done
  done
  printf '\n%-8s %-10s %8s  %s\n' version suite seconds status
  while IFS=$'\t' read -r v name secs st; do printf '%-8s %-10s %8s  %s\n' "$v" "$name" "$secs" "$st"; done <"$times"
  [ ${#failed[@]} = 0 ] || die "failed: ${failed[*]}"
  log "every suite passed on PostgreSQL $*"
}

case "${1:-}" in
  init) cmd_init ;;
  run) shift; cmd_run "$@" ;;
  *) sed -n '5,7p' "$0" >&2; exit 2 ;;
esac
