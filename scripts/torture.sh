#!/usr/bin/env bash
# Torture and crash-recovery tests (tests/torture, the idempotency-torture program) against a
# scratch cluster of their own, which this script starts (scripts/pgcluster.sh) and always
# stops again. The extension must already be installed into the PostgreSQL of PG_BINDIR.
#
#   scripts/torture.sh load  [idempotency-torture load options]   hot-key load + checker
#   scripts/torture.sh crash [idempotency-torture crash options]  kill -9 cycles + checks
#
#   PG_BINDIR     PostgreSQL binaries (default: the system PostgreSQL 15)
#   TORTURE_PORT  port of the scratch cluster (default 54341); its data is build/torture
#                 (build/crash for crash)
# e.g. scripts/torture.sh load --connections 32 --requests 100000 --keys 16
#      scripts/torture.sh crash --cycles 20
# Exits non-zero when the checker found an anomaly.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PORT=${TORTURE_PORT:-54341}

die() { printf 'torture: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] || die "usage: torture.sh load|crash [options]"
mode=$1; shift
case "$mode" in
  load) DIR=$ROOT/build/torture ;;
  crash) DIR=$ROOT/build/crash ;;
  *) die "unknown mode $mode (load or crash)" ;;
esac

sharedir=$("$PG_BINDIR/pg_config" --sharedir)
[ -f "$sharedir/extension/idempotency.control" ] \
  || die "the extension is not installed in $sharedir/extension (run: make install)"

# The client program: a debug build is enough (the server is what is being tested).
(cd "$ROOT" && cargo build -q -p idempotency-torture)
BIN=$ROOT/target/debug/idempotency-torture

# A fresh cluster every run: the crash test must start from a clean WAL, the load from empty tables.
"$ROOT/scripts/pgcluster.sh" stop "$DIR" || true
rm -rf "$DIR"
mkdir -p "$DIR"
trap '"$ROOT/scripts/pgcluster.sh" stop "$DIR"' EXIT
"$ROOT/scripts/pgcluster.sh" start "$DIR" "$PORT"

psql() { "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres "$@"; }
if [ "$mode" = crash ]; then
  # Real durability for the crash test, whatever the defaults are: fsync and synchronous
  # commit on, full page writes on. fsync needs a restart to be sure it is in force.
  psql -d postgres -c "ALTER SYSTEM SET fsync = on" -c "ALTER SYSTEM SET synchronous_commit = on" \
       -c "ALTER SYSTEM SET full_page_writes = on" -c "ALTER SYSTEM SET restart_after_crash = on"
  "$ROOT/scripts/pgcluster.sh" stop "$DIR"
  "$ROOT/scripts/pgcluster.sh" start "$DIR" "$PORT"
  psql -d postgres -At -c "SELECT 'crash: ' || name || ' = ' || setting FROM pg_settings
                           WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes',
                                          'restart_after_crash') ORDER BY name"
fi
# More connections than the scratch default of 100 would allow for a big --connections.
psql -d postgres -c "CREATE DATABASE torture"

start=$(date +%s)
rc=0
if [ "$mode" = load ]; then
  "$BIN" load --host "$DIR" --port "$PORT" --dbname torture "$@" || rc=$?
else
  PG_BINDIR=$PG_BINDIR "$BIN" crash --host "$DIR" --port "$PORT" --dbname torture \
    --pgdata "$DIR/data" --pgcluster "$ROOT/scripts/pgcluster.sh" "$@" || rc=$?
fi
echo "torture $mode: exit $rc after $(( $(date +%s) - start )) s"
exit $rc
