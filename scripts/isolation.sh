#!/usr/bin/env bash
# The isolation specs (tests/isolation/specs) with PostgreSQL's pg_isolation_regress, against a
# scratch cluster (build/isolation) that this script starts and stops again. The extension must
# be installed into the PostgreSQL of PG_BINDIR (default: the system PostgreSQL 15).
#
#   scripts/isolation.sh                 every spec
#   scripts/isolation.sh NAME...         only these (e.g. begin-begin-wait0)
#
# TEST_DIR / TEST_PORT move the cluster; PG_ISOLATION_REGRESS names the pg_isolation_regress of
# another version (scripts/lib.sh, run_pg_regress). Exits with the driver's status.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

require_installed
scratch isolation
cluster_up "$DIR" "$PORT"
run_pg_regress isolation "$DIR" "$PORT" isolation_regression "$@"
