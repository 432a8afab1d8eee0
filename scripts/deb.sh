#!/usr/bin/env bash
# scripts/deb.sh [MAJOR]: the Debian package postgresql-MAJOR-idempotency of the extension's
# release build for PostgreSQL MAJOR (13..18, default 15), written to
# build/deb/postgresql-MAJOR-idempotency_VERSION-REVISION_ARCH.deb; prints its path.
# `make deb [PG=MAJOR]` runs it.
#
# The layout and names are those of the PostgreSQL apt repository's (apt.postgresql.org)
# extension packages, so that it installs beside that repository's and Debian's servers:
#   /usr/lib/postgresql/MAJOR/lib/idempotency.so                   the library (stripped)
#   /usr/share/postgresql/MAJOR/extension/idempotency.control      default_version VERSION
#   /usr/share/postgresql/MAJOR/extension/idempotency--*.sql       this version's SQL, every
#                                                                  kept release's and the upgrade scripts
#   /usr/share/doc/postgresql-MAJOR-idempotency/copyright          machine-readable (DEP-5)
#   /usr/share/doc/postgresql-MAJOR-idempotency/changelog.Debian.gz  packaging/deb/changelog
#   /usr/share/doc/postgresql-MAJOR-idempotency/changelog.gz       the upstream CHANGELOG.md
#   /usr/share/doc/postgresql-MAJOR-idempotency/README.md.gz
# Depends: postgresql-MAJOR (that major's server) and the shared libraries the library links
# (dpkg-shlibdeps reads them from its NEEDED entries: libc6, libgcc-s1).
#
# The build: `cargo pgrx package` (release profile) against the PostgreSQL of that major: the
# system's for 15 (DEB_PG15_CONFIG overrides it), build/pg/MAJOR from scripts/pg-fetch.sh for
# the others; the tree it writes mirrors that PostgreSQL's pg_config paths, which are mapped
# here to the Debian ones above. pgrx gets a PGRX_HOME of its own (build/deb/pgrx-MAJOR,
# registering only that major), so that a stale registration in ~/.pgrx cannot break the build.
# The package is assembled with dpkg-deb from a control file written here (no debian/ source
# tree: the binary package is all that is shipped). Needs dpkg-dev (dpkg-shlibdeps).
# The version is the crate's (Cargo.toml, which is also the control file's default_version);
# the Debian revision comes from the top entry of packaging/deb/changelog, whose upstream
# part must equal it.
set -euo pipefail
NAME=deb
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

major=${1:-15}
case "$major" in 13 | 14 | 15 | 16 | 17 | 18) ;; *) die "MAJOR must be 13..18, not '$major'" ;; esac
if ! command -v dpkg-shlibdeps >/dev/null; then
  [ "$(id -u)" -eq 0 ] || die "dpkg-shlibdeps is missing (apt-get install dpkg-dev)"
  log "installing dpkg-dev (dpkg-shlibdeps)"
  { apt-get install -y -qq -o DPkg::Lock::Timeout=300 dpkg-dev >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dpkg-dev >/dev/null; }; }
fi

if [ "$major" = 15 ]; then
  pg_config=${DEB_PG15_CONFIG:-$SYSTEM_PG_BINDIR/pg_config}
else
  pg_config=$(bash scripts/pg-fetch.sh "$major")
fi
got=$("$pg_config" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
[ "$got" = "$major" ] || die "$pg_config is PostgreSQL $got, not $major"

version=$(crate_version)
deb_version=$(sed -n '1s/^[a-z0-9.+-]* (\([^)]*\)).*/\1/p' packaging/deb/changelog)
[ "${deb_version%-*}" = "$version" ] \
  || die "packaging/deb/changelog's top entry is $deb_version, but Cargo.toml's version is $version: add an entry"
arch=$(dpkg --print-architecture)
pkg=postgresql-$major-idempotency
out=$ROOT/build/deb/${pkg}_${deb_version}_${arch}.deb
work=$ROOT/build/deb/$major
rm -rf "$work"
mkdir -p "$work"

# --- the release build ---------------------------------------------------------------------
pgrx_home=$ROOT/build/deb/pgrx-$major
mkdir -p "$pgrx_home"
printf '[configs]\npg%s = "%s"\n' "$major" "$pg_config" >"$pgrx_home/config.toml.new"
# Rewritten only when it changes: pgrx-pg-sys's build script reruns when the file does.
cmp -s "$pgrx_home/config.toml.new" "$pgrx_home/config.toml" 2>/dev/null \
  || mv "$pgrx_home/config.toml.new" "$pgrx_home/config.toml"
rm -f "$pgrx_home/config.toml.new"
log "building the release library for $("$pg_config" --version) ($pg_config)"
PGRX_HOME=$pgrx_home cargo pgrx package --pg-config "$pg_config" --out-dir "$work/tree" >&2

# --- the package tree ----------------------------------------------------------------------
root=$work/root
libdir=$root/usr/lib/postgresql/$major/lib
extdir=$root/usr/share/postgresql/$major/extension
docdir=$root/usr/share/doc/$pkg
install -d -m 755 "$libdir" "$extdir" "$docdir" "$root/DEBIAN"

src_lib=$work/tree$("$pg_config" --pkglibdir)
src_ext=$work/tree$("$pg_config" --sharedir)/extension
[ -f "$src_lib/idempotency.so" ] || die "cargo pgrx package wrote no $src_lib/idempotency.so"
install -m 644 "$src_lib/idempotency.so" "$libdir/"
# Policy 10.1: shipped binaries are stripped; the dynamic symbols PostgreSQL looks up stay.
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$libdir/idempotency.so"
install -m 644 "$src_ext"/idempotency.control "$src_ext"/idempotency--*.sql "$extdir/"
install -m 644 sql/releases/idempotency--*.sql "$extdir/"
# The upgrade scripts expanded (their \include_block lines replaced: scripts/sql-include.py).
python3 scripts/sql-include.py install "$extdir"

grep -qx "default_version = '$version'" "$extdir/idempotency.control" \
  || die "the packaged idempotency.control does not say default_version = '$version'"
[ -f "$extdir/idempotency--$version.sql" ] || die "no idempotency--$version.sql in the build"
for f in sql/releases/idempotency--*.sql; do
  cmp -s "$f" "$extdir/$(basename "$f")" || die "$(basename "$f") is missing from the package or differs"
done
for f in sql/idempotency--*--*.sql; do
  python3 scripts/sql-include.py expand "$f" | cmp -s - "$extdir/$(basename "$f")" \
    || die "$(basename "$f") is missing from the package or differs from its expansion"
done
! grep -l '^\\include_block' "$extdir"/*.sql || die "an unexpanded include is in the package (above)"
nm -D --defined-only "$libdir/idempotency.so" | grep -qw Pg_magic_func \
  || die "the stripped library lost Pg_magic_func"

install -m 644 packaging/deb/copyright "$docdir/copyright"
gzip -9n <packaging/deb/changelog >"$docdir/changelog.Debian.gz"
gzip -9n <CHANGELOG.md >"$docdir/changelog.gz"
gzip -9n <README.md >"$docdir/README.md.gz"
chmod 644 "$docdir"/*

# --- the control file ----------------------------------------------------------------------
shlibs=$work/shlibs
mkdir -p "$shlibs/debian"
printf 'Source: postgresql-idempotency\n\nPackage: %s\nArchitecture: any\n' "$pkg" >"$shlibs/debian/control"
libdeps=$(cd "$shlibs" && dpkg-shlibdeps -O --warnings=0 -e "$libdir/idempotency.so" 2>/dev/null \
  | sed -n 's/^shlibs:Depends=//p')
[ -n "$libdeps" ] || die "dpkg-shlibdeps found no library dependency (expected libc6 at least)"

(cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
installed_kib=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: $pkg
Source: postgresql-idempotency
Version: $deb_version
Architecture: $arch
Maintainer: idempotency developers <maintainers@idempotency.invalid>
Installed-Size: $installed_kib
Depends: postgresql-$major, $libdeps
Section: database
Priority: optional
Homepage: https://github.com/idempotency/idempotency
Description: durable idempotency keys for PostgreSQL $major
 The idempotency extension handles Idempotency-Key requests inside the
 database, in the caller's transaction: a retried request replays the first
 outcome, a concurrent one is told the key is in progress, a different command
 under the same key is rejected, and a crashed attempt can be taken over after
 its lease.
 .
 This package holds the extension for PostgreSQL $major. Add idempotency to
 shared_preload_libraries for the purge worker and the counters, then run
 CREATE EXTENSION idempotency in each database that uses it.
EOF
chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"
find "$root" -type d -exec chmod 755 {} +

rm -f "$out"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >&2
log "$(basename "$out"): $(du -k "$out" | cut -f1) KiB, Depends: postgresql-$major, $libdeps"
echo "$out"
