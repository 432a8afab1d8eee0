#!/usr/bin/env bash
# A private copy of the system PostgreSQL 15 with a release build of the extension, for a run of
# bench/http/layers/run.sh while other work uses the system installation: installing there
# (make bench-http-layers does) rewrites the library under the servers that have it loaded.
#
#   PG_BINDIR=$(bash bench/http/layers/private-pg.sh) bash bench/http/layers/run.sh
#
# PostgreSQL finds its library and share directories relative to its executable, so a copy of
# /usr/lib/postgresql/15 and /usr/share/postgresql/15 under build/bench-http-layers/pg15-release
# runs from there; `cargo pgrx package` (release) puts the extension's files over it, and the
# SQL of the earlier releases is copied as scripts/lib.sh install does. Prints the bin directory.
set -euo pipefail
NAME=private-pg
. "$(dirname "$0")/../../../scripts/lib.sh"
PG_CONFIG=$SYSTEM_PG_BINDIR/pg_config
OUT=$ROOT/build/bench-http-layers/pg15-release
lib=$("$PG_CONFIG" --pkglibdir)
share=$("$PG_CONFIG" --sharedir)
bindir=$("$PG_CONFIG" --bindir)

log "cargo pgrx package (release) for $("$PG_CONFIG" --version)"
(cd "$ROOT" && cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$OUT.pkg") >&2
rm -rf "$OUT"
mkdir -p "$OUT$(dirname "$lib")" "$OUT$(dirname "$share")" "$OUT$(dirname "$bindir")"
cp -a "$lib" "$OUT$lib"
[ -d "$OUT$bindir" ] || cp -a "$bindir" "$OUT$bindir"
cp -a "$share" "$OUT$share"
cp -a "$OUT.pkg/." "$OUT/"
install -m 644 "$ROOT"/sql/releases/idempotency--*.sql "$OUT$share/extension/"
# The clusters' owner runs postgres from there.
[ "$(id -u)" -ne 0 ] || chmod -R a+rX "$OUT"
echo "$OUT$bindir"
