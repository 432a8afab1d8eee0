#!/usr/bin/env bash
# The Python client's tests: first the generator of the sync module on its sample, and that
# the generated module is what its async original generates (clients/python/tools/
# async_to_sync.py --self-test, --check: sync.py from aio.py); then
# clients/python/tests (pytest) on a fresh scratch cluster of their own (build/client-python)
# from PG_BINDIR, which must have the extension installed; then mypy --strict on the package
# and on the generator. PyPI packages into build/venv-clients when missing.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
log "generated modules up to date (tools/async_to_sync.py --self-test, --check)"
(cd clients/python && python3 tools/async_to_sync.py --self-test) || die "the generator's self-test failed"
(cd clients/python && python3 tools/async_to_sync.py --check) \
  || die "a generated module of clients/python is stale or was edited by hand (the diff above)"
require_installed
scratch client-python

VENV=$(bash scripts/client-venv.sh)
cluster_fresh "$DIR" "$PORT"

log "pytest clients/python/tests"
(cd clients/python && IDEM_TEST_PGHOST=$DIR IDEM_TEST_PGPORT=$PORT "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests)
log "mypy --strict"
(cd clients/python && "$VENV/bin/mypy" --cache-dir "$ROOT/build/mypy-cache")
(cd clients/python && "$VENV/bin/mypy" --strict --cache-dir "$ROOT/build/mypy-cache" tools/async_to_sync.py)
