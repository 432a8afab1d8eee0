#!/usr/bin/env bash
# The TypeScript client's tests (clients/typescript/test, node's own test runner) on a
# scratch cluster of their own: build/client-typescript on CLIENT_TYPESCRIPT_PORT (default
# 54522), from PG_BINDIR (default the system PostgreSQL 15), which must have the extension
# installed. The Express tests listen on 127.0.0.1:CLIENT_TYPESCRIPT_HTTP_PORT (18110).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
NAME=client-typescript
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
PORT=${CLIENT_TYPESCRIPT_PORT:-54522}
DIR=$ROOT/build/client-typescript
export PG_BINDIR
. scripts/testlib.sh
require_installed

step "npm ci (when needed) and tsc"
bash scripts/client-npm.sh
rm -rf "$DIR"
bash scripts/pgcluster.sh start "$DIR" "$PORT"
trap 'bash scripts/pgcluster.sh stop "$DIR"' EXIT

step "node --test clients/typescript/dist/test"
(cd clients/typescript && IDEM_TEST_PGHOST=$DIR IDEM_TEST_PGPORT=$PORT \
  IDEM_TEST_HTTP_PORT=${CLIENT_TYPESCRIPT_HTTP_PORT:-18110} \
  node --test --test-concurrency=1 dist/test/*.test.js)
