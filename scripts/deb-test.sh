#!/usr/bin/env bash
# scripts/deb-test.sh [DEB]: the Debian package for PostgreSQL 15, tested as installed on the
# machine's Debian PostgreSQL 15 (part of `make test-packages`; DEB defaults to the one
# `bash scripts/deb.sh 15` builds now). Root only (apt-get).
#
#   1. lintian: no error and no warning (but initial-upload-closes-no-bugs: no Debian ITP);
#      dpkg-deb -c: exactly the files of the layout in scripts/deb.sh;
#   2. `apt-get install ./postgresql-15-idempotency_...deb`; the installed library is the
#      packaged one;
#   3. on scratch clusters of the system's 15 with the library in shared_preload_libraries:
#      the demo's story (scripts/demo.sh), the pg_regress files (scripts/regress.sh) but the
#      three that pin the library's behaviour when it is NOT preloaded (operator_views,
#      roles, settings_syntax), the counters (idem_stats needs the preload); then every
#      pg_regress file on a cluster without the preload, as `make test-regress` runs them;
#   4. records written through the packaged extension, the server stopped, `apt-get remove`:
#      the package is gone with every file it installed; the server, started again without
#      the preload, still has the records (the data is the database's, not the package's),
#      and CREATE EXTENSION in a new database fails for want of the control file.
#
# The system PostgreSQL 15 is shared: every other suite installs its build there, and
# installing this package replaces those files, removing it deletes them. So the files found
# there before (lib/idempotency.so, extension/idempotency*) are saved first and put back once
# the package is removed, and in an exit trap whatever happens. A package left installed by an
# interrupted run is refused: remove it (apt-get remove postgresql-15-idempotency) and run
# `make install` again.
set -euo pipefail
NAME=deb-test
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

[ "$(id -u)" -eq 0 ] || die "run as root: it installs and removes a Debian package"
PG_BINDIR=$SYSTEM_PG_BINDIR
export PG_BINDIR
major=15
pkg=postgresql-$major-idempotency
deb=${1:-$(bash scripts/deb.sh "$major")}
[ -f "$deb" ] || die "no package at $deb"
deb=$(realpath "$deb")
base=$ROOT/build/packages/deb
port=$(port_of packages)
mkdir -p "$base"

installed_status() { dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || echo not-installed; }
[ "$(installed_status)" = not-installed ] || [ "$(installed_status)" = config-files ] \
  || die "$pkg is installed (status $(installed_status)), maybe by an interrupted run: remove it and run make install"

# --- 1. the package's contents -------------------------------------------------------------
if ! command -v lintian >/dev/null; then
  log "installing lintian (Debian's package checker)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 lintian >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=300 lintian >/dev/null; }
fi
lint=$(lintian --suppress-tags initial-upload-closes-no-bugs "$deb" 2>&1 \
  | grep -v 'running with root privileges is not recommended' || true)
[ -z "$lint" ] || { printf '%s\n' "$lint" >&2; die "lintian found the problems above"; }
log "lintian: clean"

files=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ {print $6}' | sed 's|^\./|/|' | sort)
want=$( {
  echo "/usr/lib/postgresql/$major/lib/idempotency.so"
  echo "/usr/share/postgresql/$major/extension/idempotency.control"
  echo "/usr/share/postgresql/$major/extension/idempotency--$(crate_version).sql"
  for f in sql/releases/idempotency--*.sql sql/idempotency--*--*.sql; do
    echo "/usr/share/postgresql/$major/extension/$(basename "$f")"
  done
  for f in copyright changelog.Debian.gz changelog.gz README.md.gz; do echo "/usr/share/doc/$pkg/$f"; done
} | sort)
expect_eq "the package's files" "$files" "$want"
depends=$(dpkg-deb -f "$deb" Depends)
case "$depends" in "postgresql-$major, libc6 (>= "*) ;; *) die "Depends is '$depends'" ;; esac
log "$(basename "$deb"): $(wc -l <<<"$files") files as laid out; Depends: $depends"

# --- 2. install, the system's files saved first -------------------------------------------
libdir=/usr/lib/postgresql/$major/lib
extdir=/usr/share/postgresql/$major/extension
saved=$base/saved-system
restored=0
restore_system_files() {
  [ "$restored" = 0 ] || return 0
  if [ "$(installed_status)" != not-installed ] && [ "$(installed_status)" != config-files ]; then
    log "removing $pkg"
    DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq -o DPkg::Lock::Timeout=300 "$pkg" >/dev/null || true
  fi
  if [ -d "$saved" ]; then
    log "putting back the extension files that were installed before ($(ls "$saved" | wc -l) files)"
    # A copy beside the target, then a rename: a server that has the library mapped keeps its
    # file, never one rewritten under it.
    local f dest
    for f in "$saved"/idempotency*; do
      [ -e "$f" ] || continue
      case "$f" in */idempotency.so) dest=$libdir ;; *) dest=$extdir ;; esac
      cp -a "$f" "$dest/.$(basename "$f").restore" && mv -f "$dest/.$(basename "$f").restore" "$dest/$(basename "$f")"
    done
  fi
  restored=1
}
rm -rf "$saved"
mkdir -p "$saved"
[ ! -e "$libdir/idempotency.so" ] || cp -a "$libdir/idempotency.so" "$saved/"
find "$extdir" -maxdepth 1 -name 'idempotency*' -exec cp -a {} "$saved/" \;
on_exit restore_system_files

log "apt-get install $deb"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  -o DPkg::Lock::Timeout=300 "$deb" >"$base/apt-install.log" 2>&1 \
  || { cat "$base/apt-install.log" >&2; die "apt-get install failed"; }
expect_eq "dpkg's status of $pkg" "$(installed_status)" installed
dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/lib/postgresql/$major/lib/idempotency.so" \
  | cmp -s - "$libdir/idempotency.so" || die "the installed library is not the packaged one"

# --- 3. the demo and the pg_regress files against the installed package ---------------------
preload="shared_preload_libraries = 'idempotency'"
log "the demo, the library preloaded"
TEST_DIR=$base/demo TEST_PORT=$port PGCLUSTER_SETTINGS=$preload \
  bash scripts/demo.sh >"$base/demo.log" 2>&1 \
  || { tail -n 40 "$base/demo.log" >&2; die "the demo failed against the installed package (whole transcript: $base/demo.log)"; }
tail -n 1 "$base/demo.log" >&2

neutral=()
for f in tests/regress/sql/*.sql; do
  case "$(basename "$f" .sql)" in
    # What these pin happens only without the preload: idem_stats refusing without it
    # (operator_views), a value set before the library loaded (roles, settings_syntax).
    operator_views | roles | settings_syntax) ;;
    *) neutral+=("$(basename "$f" .sql)") ;;
  esac
done
log "pg_regress, the library preloaded: ${#neutral[@]} files"
TEST_DIR=$base/regress-preloaded TEST_PORT=$port PGCLUSTER_SETTINGS=$preload \
  bash scripts/regress.sh "${neutral[@]}" >"$base/regress-preloaded.log" 2>&1 \
  || { cat "$base/regress-preloaded.log" >&2; die "pg_regress failed on the preloaded package"; }
log "pg_regress, not preloaded: every file"
TEST_DIR=$base/regress TEST_PORT=$port bash scripts/regress.sh >"$base/regress.log" 2>&1 \
  || { cat "$base/regress.log" >&2; die "pg_regress failed on the installed package"; }

# --- 4. records outlive the package ----------------------------------------------------------
dir=$base/cluster
cluster_stop "$dir"
rm -rf "$dir"
on_exit cluster_stop "$dir"
PGCLUSTER_SETTINGS=$preload cluster_start "$dir" "$port"
sql "$dir" "$port" postgres "CREATE DATABASE keep" >/dev/null
sql "$dir" "$port" keep "CREATE EXTENSION idempotency" >/dev/null
write_records "$dir" "$port" keep packaged "" '1 hour'
before=$(sql "$dir" "$port" keep "SELECT key, state, http_status, response, resource
  FROM idempotency.records WHERE scope = 'packaged' AND key IN ('completed', 'failed-final') ORDER BY key")
expect_eq "the records written through the package" "$before" \
  'completed|c|201|{"id": 981, "note": "naïve ✓"}|payments/981
failed-final|f|402|{"code": "card_declined"}|'
expect_eq "the counters of the preloaded library" \
  "$(sql "$dir" "$port" keep "SELECT completions >= 1 AND failures_final >= 1 FROM idem_stats() WHERE datname = 'keep'")" t
cluster_stop "$dir"

log "apt-get remove $pkg"
DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq -o DPkg::Lock::Timeout=300 "$pkg" \
  >"$base/apt-remove.log" 2>&1 || { cat "$base/apt-remove.log" >&2; die "apt-get remove failed"; }
case "$(installed_status)" in not-installed | config-files) ;; *) die "$pkg is still $(installed_status)" ;; esac
left=$(while read -r f; do [ ! -e "$f" ] || echo "$f"; done <<<"$files")
[ -z "$left" ] || die "files left after apt-get remove: $left"

cluster_start "$dir" "$port"
expect_eq "the records after the package's removal" "$(sql "$dir" "$port" keep "SELECT key, state, http_status, response, resource
  FROM idempotency.records WHERE scope = 'packaged' AND key IN ('completed', 'failed-final') ORDER BY key")" "$before"
expect_error "$dir" "$port" keep 58P01 "SELECT * FROM idem_check('packaged', 'completed')" 'idempotency'
sql "$dir" "$port" postgres "CREATE DATABASE fresh" >/dev/null
expect_error "$dir" "$port" fresh 0A000 "CREATE EXTENSION idempotency" 'extension "idempotency" is not available'
cluster_stop "$dir"
restore_system_files
for f in "$saved"/idempotency*; do
  [ -e "$f" ] || continue
  case "$f" in */idempotency.so) d=$libdir ;; *) d=$extdir ;; esac
  cmp -s "$f" "$d/$(basename "$f")" || die "$d/$(basename "$f") was not put back as it was"
done
log "passed: installed, the demo and pg_regress ran, removed cleanly, the records kept"
