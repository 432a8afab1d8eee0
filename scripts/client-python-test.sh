#!/usr/bin/env bash
# The Python client's tests (clients/python/tests, pytest) on a fresh scratch cluster of their
# own (build/client-python) from PG_BINDIR, which must have the extension installed; then
# mypy --strict on the package. PyPI packages into build/venv-clients when missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
require_installed
scratch client-python

VENV=$(bash scripts/client-venv.sh)
cluster_fresh "$DIR" "$PORT"

log "pytest clients/python/tests"
(cd clients/python && IDEM_TEST_PGHOST=$DIR IDEM_TEST_PGPORT=$PORT "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests)
log "mypy --strict"
(cd clients/python && "$VENV/bin/mypy" --cache-dir "$ROOT/build/mypy-cache")
