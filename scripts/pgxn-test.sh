#!/usr/bin/env bash
# scripts/pgxn-test.sh [ZIP]: the PGXN distribution, built and installed from the unpacked
# archive alone (part of `make test-packages`; ZIP defaults to the one `bash scripts/dist.sh`
# makes now).
#
#   1. the archive unpacked into an empty directory (build/packages/pgxn/src);
#   2. there, what a PGXN user runs: `make install PG_CONFIG=...` (the archive's own Makefile:
#      its setup step checks the pinned cargo-pgrx 0.18.0 and the Debian packages, then
#      cargo pgrx install and the kept releases' SQL); into a private copy of the PostgreSQL 18
#      of scripts/pg-fetch.sh (build/packages/pgxn/pg), so that no PostgreSQL another suite uses
#      is touched;
#   3. a scratch cluster of that PostgreSQL: CREATE EXTENSION (the crate's version), a claim,
#      its completion and the replay; CREATE EXTENSION of the oldest kept release and ALTER
#      EXTENSION UPDATE to the current one (the upgrade scripts came with the archive).
# The build has its own PGRX_HOME (registering only that copy and the system 15 that the
# archive's setup step wants) and its own target directory, target/pgxn: a build cache only
# (sources come from the archive), kept between runs; sharing target/ would make pgrx-pg-sys
# rebuild for the suites each time (its build script reruns when the pg_config path changes).
set -euo pipefail
NAME=pgxn-test
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

zip=${1:-$(bash scripts/dist.sh)}
[ -f "$zip" ] || die "no archive at $zip"
zip=$(realpath "$zip")
base=$ROOT/build/packages/pgxn
dir=$base/cluster
port=$(port_of packages)
cluster_stop "$dir"
rm -rf "$base"
mkdir -p "$base/src"

# --- 1. unpack ---------------------------------------------------------------------------
unzip -q "$zip" -d "$base/src"
dist=$(basename "$zip" .zip)
src=$base/src/$dist
[ -f "$src/META.json" ] || die "no $dist/META.json in the archive"
version=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$src/META.json")

# --- 2. build and install from the archive alone -----------------------------------------
pg18=$(bash scripts/pg-fetch.sh 18)
cp -a "$(dirname "$(dirname "$pg18")")" "$base/pg"
pg_config=$base/pg/bin/pg_config
rm -f "$("$pg_config" --pkglibdir)"/idempotency.so "$("$pg_config" --sharedir)"/extension/idempotency*
mkdir -p "$base/pgrx"
printf '[configs]\npg15 = "%s"\npg18 = "%s"\n' "$SYSTEM_PG_BINDIR/pg_config" "$pg_config" >"$base/pgrx/config.toml"
log "make install PG_CONFIG=$pg_config in the unpacked $dist (build log: $base/build.log)"
t0=$(date +%s)
(cd "$src" && env -u PG_BINDIR -u MAKEFLAGS -u MAKELEVEL PGRX_HOME="$base/pgrx" \
  CARGO_TARGET_DIR="$ROOT/target/pgxn" make install PG_CONFIG="$pg_config" PROFILE=debug) \
  >"$base/build.log" 2>&1 || { tail -n 40 "$base/build.log" >&2; die "make install from the archive failed"; }
log "built and installed in $(($(date +%s) - t0)) s with $(cargo pgrx --version)"
cargo pgrx --version | grep -q ' 0\.18\.0$' || die "cargo-pgrx is not the pinned 0.18.0"
[ -f "$("$pg_config" --pkglibdir)/idempotency.so" ] || die "no idempotency.so installed"

# --- 3. CREATE EXTENSION ------------------------------------------------------------------
PG_BINDIR=$base/pg/bin
cluster_fresh "$dir" "$port"
sql "$dir" "$port" postgres "CREATE EXTENSION idempotency" >/dev/null
expect_eq "the installed version" "$(sql "$dir" "$port" postgres \
  "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")" "$version"
expect_eq "a first request" "$(sql "$dir" "$port" postgres \
  "SELECT outcome FROM idem_begin('pgxn', 'k1', '{\"amount\": 1}')")" execute
sql "$dir" "$port" postgres "SELECT idem_complete('pgxn', 'k1', '{\"id\": 1}', 'payments/1', 201)" >/dev/null
expect_eq "its retry" "$(sql "$dir" "$port" postgres \
  "SELECT outcome, http_status, response FROM idem_begin('pgxn', 'k1', '{\"amount\": 1}')")" 'replay|201|{"id": 1}'
oldest=$(cd "$src/sql/releases" && ls idempotency--*.sql | sed 's/^idempotency--\(.*\)\.sql$/\1/' | sort -V | head -n1)
sql "$dir" "$port" postgres "CREATE DATABASE upgraded" >/dev/null
sql "$dir" "$port" upgraded "CREATE EXTENSION idempotency VERSION '$oldest'" >/dev/null
sql "$dir" "$port" upgraded "ALTER EXTENSION idempotency UPDATE" >/dev/null
expect_eq "$oldest updated" "$(sql "$dir" "$port" upgraded \
  "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")" "$version"
cluster_stop "$dir"
log "passed: $dist built and installed from the archive alone; CREATE EXTENSION $version and the update from $oldest work"
