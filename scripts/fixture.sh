#!/usr/bin/env bash
# fixture.sh: one HTTP layer's fixture app in the foreground (`make fixture`), the routes of
# docs/http.md ("Conformance vectors and fixtures") behind that framework's drop-in layer.
#
#   FRAMEWORK=<express|hono|starlette|django|axum> PORT=<port> DATABASE_URL=<libpq URL> \
#     [FIXTURE_TTL=2s] bash scripts/fixture.sh
#   make fixture FRAMEWORK=... PORT=... DATABASE_URL=... [FIXTURE_TTL=2s]
#
# DATABASE_URL names a database of a PostgreSQL with the extension installed (the fixture
# creates the extension and its table there); it may use ?host=/socket/dir&port=N. FIXTURE_TTL
# (a number and ms, s, m or h) is the layer's ttl: keys expire after that long. The fixture
# listens on 127.0.0.1:PORT until it is stopped. This script checks the arguments, then execs
# tests/http-layers/fixtures/$FRAMEWORK/serve.sh from the checkout's root (it builds what its
# framework needs, then execs the server), so its process id is the server's.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

FRAMEWORKS="express hono starlette django axum"
usage() {
  sed -n '5,7p' "$0" >&2
  exit 2
}
case "${1:-}" in -h | --help) usage ;; "") ;; *) log "takes no arguments: settings come from the environment"; usage ;; esac

FRAMEWORK=${FRAMEWORK:-}
[ -n "$FRAMEWORK" ] || { log "FRAMEWORK is not set (one of: $FRAMEWORKS)"; usage; }
case " $FRAMEWORKS " in
  *" $FRAMEWORK "*) ;;
  *) die "unknown framework '$FRAMEWORK': FRAMEWORK is one of $FRAMEWORKS" ;;
esac
SERVE=tests/http-layers/fixtures/$FRAMEWORK/serve.sh
[ -f "$SERVE" ] || die "no fixture for $FRAMEWORK: $SERVE does not exist"
[ -x "$SERVE" ] || die "$SERVE is not executable"

PORT=${PORT:-}
case "$PORT" in
  '' | *[!0-9]*) die "PORT must be a port number, got '$PORT'" ;;
esac
[ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || die "PORT must be 1..65535, got $PORT"
DATABASE_URL=${DATABASE_URL:-}
case "$DATABASE_URL" in
  postgres://* | postgresql://*) ;;
  '') die "DATABASE_URL is not set (a libpq URL, e.g. postgresql://postgres@localhost/fixture?host=/socket/dir&port=5432)" ;;
  *) die "DATABASE_URL must be a postgres:// or postgresql:// URL, got '$DATABASE_URL'" ;;
esac
FIXTURE_TTL=${FIXTURE_TTL:-}
if [ -n "$FIXTURE_TTL" ]; then
  [[ "$FIXTURE_TTL" =~ ^[0-9]+(ms|s|m|h)$ ]] \
    || die "FIXTURE_TTL must be a number and ms, s, m or h (e.g. 2s), got '$FIXTURE_TTL'"
  export FIXTURE_TTL
else
  unset FIXTURE_TTL
fi
export PORT DATABASE_URL

log "$FRAMEWORK fixture on 127.0.0.1:$PORT${FIXTURE_TTL:+ (ttl $FIXTURE_TTL)}"
exec "$SERVE"
