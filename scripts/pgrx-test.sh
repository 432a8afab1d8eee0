#!/usr/bin/env bash
# The #[pg_test]s (src/tests.rs) with `cargo pgrx test PG` (PG: pg15 unless set), on the
# PostgreSQL registered for that version in pgrx's config (scripts/setup.sh, scripts/pg-matrix.sh).
# cargo-pgrx installs a test build of the extension into that PostgreSQL, so the note that
# `make` keeps of what it installed there is dropped (the next suite that needs the extension
# installs it again). As root, PostgreSQL must run as the `postgres` user: cargo-pgrx then
# needs --runas and a data directory that postgres owns and can reach, and sudo.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

PG=${PG:-pg15}
cfg=${PGRX_HOME:-$HOME/.pgrx}/config.toml
pg_config=$(sed -n "s/^$PG *= *\"\(.*\)\"\$/\1/p" "$cfg" 2>/dev/null || true)
[ -n "$pg_config" ] || die "$PG is not registered in $cfg (run scripts/setup.sh or scripts/pg-matrix.sh init)"
forget_install "$pg_config"

if [ "$(id -u)" -eq 0 ]; then
  pgdata=$ROOT/target/pgrx-test-data-$PG
  mkdir -p "$pgdata"
  chown postgres: "$pgdata"
  d=$(dirname "$pgdata")
  while [ "$d" != / ]; do
    sudo -u postgres test -x "$d" || chmod o+x "$d"
    d=$(dirname "$d")
  done
  exec cargo pgrx test "$PG" --runas postgres --pgdata "$pgdata"
else
  exec cargo pgrx test "$PG"
fi
