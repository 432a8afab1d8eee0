#!/usr/bin/env bash
# Installs what building and testing need, skipping whatever is already there, so that
# `make demo` and `make test` are all the set-up a new machine needs:
#   - Debian packages: the server, its headers (PGXS, pg_regress, pg_isolation_regress), clang
#     and libclang for bindgen, sudo (as root, cargo-pgrx runs the test server as `postgres`
#     through sudo, and the scratch clusters run as that user);
#   - cargo-pgrx 0.18.0, the version of the pinned pgrx crates (pgrx 0.19 needs Rust 1.96);
#   - `cargo pgrx init` for PG15_CONFIG (default: the system PostgreSQL 15).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PGRX_VERSION=0.18.0
# The PostgreSQL 15 that `cargo pgrx test pg15` uses. Not PG_CONFIG: `make install
# PG_CONFIG=<another version>` must not register that version as pg15.
PG15_CONFIG=${PG15_CONFIG:-$SYSTEM_PG_BINDIR/pg_config}

need=()
for p in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    die "missing Debian packages: ${need[*]} (run as root, or install them)"
  fi
  log "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The pinned cargo-pgrx (about 10 minutes to build on 2 cores, once).
if ! cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
  log "installing cargo-pgrx ${PGRX_VERSION}"
  cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
fi

# Register the system PostgreSQL 15 with pgrx, passing the other versions already registered
# (scripts/pg-matrix.sh init) and the testing port again so that they are kept.
cfg=${PGRX_HOME:-$HOME/.pgrx}/config.toml
# A registered version whose pg_config is gone (e.g. the build/pg of a deleted checkout that
# ran the matrix) breaks every pgrx build: pgrx-pg-sys's build script validates each one.
# Drop it; scripts/pg-matrix.sh init registers it again when the matrix runs.
if [ -f "$cfg" ]; then
  while read -r ver path; do
    if [ ! -x "$path" ]; then
      log "dropping $ver from $cfg: $path is gone"
      sed -i "/^$ver *= /d" "$cfg"
    fi
  done < <(sed -n 's/^\(pg1[3-8]\) *= *"\(.*\)"$/\1 \2/p' "$cfg")
fi
if ! grep -qs "^pg15 *= *\"${PG15_CONFIG}\"" "$cfg"; then
  log "registering ${PG15_CONFIG} with cargo pgrx init"
  args=(--pg15 "${PG15_CONFIG}")
  if [ -f "$cfg" ]; then
    while read -r ver path; do args+=("--$ver" "$path"); done \
      < <(sed -n 's/^\(pg1[346789]\) *= *"\(.*\)"$/\1 \2/p' "$cfg")
    port=$(sed -n 's/^base_testing_port *= *\([0-9]*\)$/\1/p' "$cfg")
    [ -z "$port" ] || args+=(--base-testing-port "$port")
  fi
  cargo pgrx init "${args[@]}"
fi
