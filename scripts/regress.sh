#!/usr/bin/env bash
# The pg_regress files in tests/regress/sql (the SQL-visible behaviour, hostile input,
# security) against a fresh scratch cluster (build/regress) that this script starts and stops
# again; then checks that no backend crashed. The extension must be installed into the
# PostgreSQL of PG_BINDIR (default: the system PostgreSQL 15).
#
#   scripts/regress.sh                  every file
#   scripts/regress.sh NAME...          only these (e.g. hostile_null)
#
# The server runs with a 64 MiB stack (ulimit -s; the tests raise max_stack_depth to match) so
# that PostgreSQL's own recursive JSON parser can build the 100,000-deep jsonb that
# hostile_memory feeds the extension. Memory is checked inside the tests: each heavy case runs
# in a fresh backend that reads its own peak RSS (VmHWM of /proc/self/status) before and after.
# After pg_regress, the run fails if the server log shows a backend that died (terminated by
# signal, exited abnormally, a PANIC) or if the server no longer answers.
# TEST_DIR / TEST_PORT move the cluster.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_installed
scratch regress
(ulimit -s 65536) 2>/dev/null \
  || die "cannot raise the stack limit to 64 MiB (hard limit: $(ulimit -Hs)); hostile_memory's 100,000-deep jsonb needs it"
ulimit -s 65536
# A fresh cluster every run, so that the log holds only this run's messages.
cluster_fresh "$DIR" "$PORT"

rc=0
run_pg_regress regress "$DIR" "$PORT" idem_regression "$@" || rc=$?

# The memory figures that hostile_memory measured (RAISE LOG).
grep -o 'hostile_memory: .*' "$DIR/server.log" || true

# The backend must never crash, whatever the input.
if grep -E 'terminated by signal|exited with exit code|was terminated|PANIC:' "$DIR/server.log"; then
  log "a backend died (see $DIR/server.log)"
  rc=1
fi
"$PG_BINDIR/pg_isready" -q -h "$DIR" -p "$PORT" || { log "the server is down"; rc=1; }
[ $rc -ne 0 ] || log "no backend crashed; the server is up"
exit $rc
