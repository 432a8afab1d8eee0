#!/usr/bin/env bash
# Runs the pg_regress files in tests/regress/sql (hostile input, security) with PostgreSQL's
# own pg_regress, against a scratch cluster (build/regress, port REGRESS_PORT, default 54335)
# that this script starts and always stops again, then checks that no backend crashed.
# The extension must be installed into the PostgreSQL that PG_BINDIR points at (default: the
# system PostgreSQL 15; CI installs it there with `make install PROFILE=debug`).
#
#   scripts/regress.sh                  every file
#   scripts/regress.sh NAME...          only these (e.g. hostile_null)
#   PG_BINDIR=$(dirname "$(scripts/pg-fetch.sh 15)") REGRESS_PORT=55110 scripts/regress.sh
#
# The server runs with a 64 MiB stack (ulimit -s; the tests raise max_stack_depth to match)
# so that PostgreSQL's own recursive JSON parser can build the 100,000-deep jsonb that
# hostile_memory feeds the extension. Memory is checked inside the tests: each heavy case
# runs in a fresh backend that reads its own peak RSS (VmHWM of /proc/self/status, through
# pg_read_file) before and after, and asserts a bound.
# After pg_regress, the script fails if the server log shows a backend that died (terminated
# by signal, exited abnormally, a PANIC) or if the server no longer answers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
DIR=${REGRESS_DIR:-$ROOT/build/regress}
PORT=${REGRESS_PORT:-54335}
INPUTDIR=$ROOT/tests/regress
OUTDIR=$DIR/out

die() { printf 'regress: %s\n' "$*" >&2; exit 1; }

PGXS=$("$PG_BINDIR/pg_config" --pgxs)
REGRESS=$(dirname "$PGXS")/../test/regress/pg_regress
[ -x "$REGRESS" ] || die "no pg_regress at $REGRESS (is postgresql-server-dev installed?)"
sharedir=$("$PG_BINDIR/pg_config" --sharedir)
[ -f "$sharedir/extension/idempotency.control" ] \
  || die "the extension is not installed in $sharedir/extension (run: cargo pgrx install)"

if [ $# -gt 0 ]; then
  tests=("$@")
else
  tests=()
  for f in "$INPUTDIR"/sql/*.sql; do tests+=("$(basename "$f" .sql)"); done
fi
[ ${#tests[@]} -gt 0 ] || die "no tests in $INPUTDIR/sql"

trap '"$ROOT/scripts/pgcluster.sh" stop "$DIR"' EXIT
# A fresh cluster every run, so that the log holds only this run's messages.
PG_BINDIR="$PG_BINDIR" "$ROOT/scripts/pgcluster.sh" stop "$DIR"
rm -rf "$DIR"
mkdir -p "$DIR"
(ulimit -s 65536) 2>/dev/null \
  || die "cannot raise the stack limit to 64 MiB (hard limit: $(ulimit -Hs)); hostile_memory's 100,000-deep jsonb needs it"
(ulimit -s 65536 && PG_BINDIR="$PG_BINDIR" "$ROOT/scripts/pgcluster.sh" start "$DIR" "$PORT")

mkdir -p "$OUTDIR"
rc=0
"$REGRESS" \
  --bindir="$PG_BINDIR" \
  --host="$DIR" --port="$PORT" --user=postgres \
  --dbname=idem_regression \
  --load-extension=idempotency \
  --inputdir="$INPUTDIR" \
  --outputdir="$OUTDIR" \
  "${tests[@]}" || rc=$?

if [ $rc -ne 0 ] && [ -s "$OUTDIR/regression.diffs" ]; then
  printf '\n===== %s =====\n' "$OUTDIR/regression.diffs"
  cat "$OUTDIR/regression.diffs"
fi

# The memory figures that hostile_memory measured (RAISE LOG).
grep -o 'hostile_memory: .*' "$DIR/server.log" || true

# The backend must never crash, whatever the input.
if grep -E 'terminated by signal|exited with exit code|was terminated|PANIC:' "$DIR/server.log"; then
  printf 'regress: a backend died (see %s)\n' "$DIR/server.log" >&2
  rc=1
fi
"$PG_BINDIR/pg_isready" -q -h "$DIR" -p "$PORT" || { echo "regress: the server is down" >&2; rc=1; }
[ $rc -ne 0 ] || echo "regress: no backend crashed; the server is up"
exit $rc
