#!/usr/bin/env bash
# Torture and crash-recovery tests (tests/torture, the idempotency-torture program; see
# tests/torture/README.md) against a fresh scratch cluster of their own (build/torture, or
# build/crash for crash; TEST_DIR / TEST_PORT move it), stopped again at exit. The extension
# must be installed into the PostgreSQL of PG_BINDIR (default: the system PostgreSQL 15).
#
#   scripts/torture.sh load  [idempotency-torture load options]   hot-key load + checker
#   scripts/torture.sh crash [idempotency-torture crash options]  kill -9 cycles + checks
#
# e.g. scripts/torture.sh load --connections 32 --requests 100000 --keys 16
#      scripts/torture.sh crash --cycles 20
# Exits non-zero when the checker found an anomaly.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] || die "usage: torture.sh load|crash [options]"
mode=$1
shift
case "$mode" in
  load) scratch torture ;;
  crash) scratch crash ;;
  *) die "unknown mode $mode (load or crash)" ;;
esac
require_installed

# The client program: a debug build is enough (the server is what is being tested).
(cd "$ROOT" && cargo build -q -p idempotency-torture)
BIN=$ROOT/target/debug/idempotency-torture

# A fresh cluster every run: the crash test must start from a clean WAL, the load from empty tables.
access_path_options
cluster_fresh "$DIR" "$PORT"
if [ "$mode" = crash ]; then
  # Real durability for the crash test, whatever the defaults are: fsync and synchronous
  # commit on, full page writes on. fsync needs a restart to be sure it is in force.
  psql_at "$DIR" "$PORT" postgres -c "ALTER SYSTEM SET fsync = on" \
    -c "ALTER SYSTEM SET synchronous_commit = on" -c "ALTER SYSTEM SET full_page_writes = on" \
    -c "ALTER SYSTEM SET restart_after_crash = on"
  cluster_stop "$DIR"
  cluster_start "$DIR" "$PORT"
  log "$(sql "$DIR" "$PORT" postgres "SELECT string_agg(name || ' = ' || setting, ', ' ORDER BY name)
                                     FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit',
                                       'full_page_writes', 'restart_after_crash')")"
fi
sql "$DIR" "$PORT" postgres "CREATE DATABASE torture"

start=$(date +%s)
rc=0
if [ "$mode" = load ]; then
  "$BIN" load --host "$DIR" --port "$PORT" --dbname torture "$@" || rc=$?
else
  PG_BINDIR=$PG_BINDIR "$BIN" crash --host "$DIR" --port "$PORT" --dbname torture \
    --pgdata "$DIR/data" --pgcluster "$ROOT/scripts/pgcluster.sh" "$@" || rc=$?
fi
log "$mode: exit $rc after $(($(date +%s) - start)) s"
[ $rc -eq 0 ] || exit $rc
# What the runs wrote, checked by PostgreSQL's own amcheck: every index entry points at a live
# heap row and every heap row that should be indexed is (heapallindexed), in both indexes'
# structure; an error here fails the run.
cluster_running "$DIR" || cluster_start "$DIR" "$PORT"
sql "$DIR" "$PORT" torture "CREATE EXTENSION IF NOT EXISTS amcheck" >/dev/null
sql "$DIR" "$PORT" torture "SELECT bt_index_check('idempotency.records_pkey', true)" >/dev/null \
  || die "amcheck found a problem in idempotency.records_pkey"
log "amcheck: records_pkey and the heap agree ($(sql "$DIR" "$PORT" torture "SELECT count(*) FROM idempotency.records") rows)"
exit 0
