#!/usr/bin/env bash
# The Python client's tests (clients/python/tests, pytest) on a scratch cluster of their own:
# build/client-python on CLIENT_PYTHON_PORT (default 54521), from PG_BINDIR (default the system
# PostgreSQL 15), which must have the extension installed (make install PG_CONFIG=...).
# Then mypy --strict on the package.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
NAME=client-python
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PORT=${CLIENT_PYTHON_PORT:-54521}
DIR=$ROOT/build/client-python
export PG_BINDIR
. scripts/testlib.sh
require_installed

VENV=$(bash scripts/client-venv.sh)
rm -rf "$DIR"
bash scripts/pgcluster.sh start "$DIR" "$PORT"
trap 'bash scripts/pgcluster.sh stop "$DIR"' EXIT

step "pytest clients/python/tests"
(cd clients/python && IDEM_TEST_PGHOST=$DIR IDEM_TEST_PGPORT=$PORT "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests)
step "mypy --strict"
(cd clients/python && "$VENV/bin/mypy" --cache-dir "$ROOT/build/mypy-cache")
