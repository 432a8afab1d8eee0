#!/usr/bin/env bash
# Runs the #[pg_test]s with `cargo pgrx test`. As root, PostgreSQL must run as the postgres
# user: cargo-pgrx then needs --runas and a data directory that postgres owns and can reach
# (../shared/BUILDING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PG=${PG:-pg15}
if [ "$(id -u)" -eq 0 ]; then
  pgdata="$PWD/target/pgrx-test-data-$PG"
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
