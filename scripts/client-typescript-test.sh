#!/usr/bin/env bash
# The TypeScript client's tests (clients/typescript/test, node's own test runner) on a fresh
# scratch cluster of their own (build/client-typescript) from PG_BINDIR, which must have the
# extension installed. The Express tests listen on 127.0.0.1 (http_port_of client-typescript),
# the drop-in layers' tests on the next two ports (Express, Hono).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
require_installed
scratch client-typescript

log "npm ci (when needed) and tsc"
bash scripts/client-npm.sh
cluster_fresh "$DIR" "$PORT"

log "node --test clients/typescript/dist/test"
(cd clients/typescript && IDEM_TEST_PGHOST=$DIR IDEM_TEST_PGPORT=$PORT \
  IDEM_TEST_HTTP_PORT=$(http_port_of client-typescript) \
  node --test --test-concurrency=1 dist/test/*.test.js)
