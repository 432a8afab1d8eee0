#!/usr/bin/env bash
# pg-source.sh MAJOR: PostgreSQL MAJOR's upstream source tree (15 or 18), from Debian's source
# package at a pinned version. Prints the absolute path of the unpacked tree on stdout; logs
# go to stderr. Treat the tree as read-only: build out of tree (VPATH, `configure` run from
# another directory), since every checkout on the machine shares it.
#
# The tree is PostgreSQL's own: its regression suite (scripts/guest-test.sh), or a build with
# assertions. Debian 12 ships no source of 18, so 18 comes from sid.
#
# Steps, each skipped when already done: a deb-src entry for the suite (a file in
# /etc/apt/sources.list.d/ with the URIs and keyring of the machine's debian.sources), then
# `apt-get update` (only when the entry was added, or when the source package is not found),
# `apt-get source --download-only` of the pinned version, and the upstream .orig.tar.bz2
# unpacked. Download and tree live in ${IDEM_CACHE:-/var/cache/idempotency}/pg-src/MAJOR, outside
# the checkout, so that later runs and other checkouts on the machine skip all of it. Two
# processes calling it at once are serialised by a lock (flock) in that directory.
set -euo pipefail
NAME=pg-source
. "$(dirname "$0")/lib.sh"

major=${1:?usage: pg-source.sh MAJOR (15 or 18)}
# The versions are pinned: the mirror is a snapshot, and other versions answer 404 there
# (e.g. 15.20 of bookworm-security).
case "$major" in
  15) suite=bookworm pkg=postgresql-15 version=15.18-0+deb12u1 ;;
  18) suite=sid pkg=postgresql-18 version=18.6-3 ;;
  *) die "no pinned source for PostgreSQL $major (15 or 18)" ;;
esac
upstream=${version%-*}                     # 15.18-0+deb12u1 -> 15.18
cache=${IDEM_CACHE:-/var/cache/idempotency}/pg-src/$major
tree=$cache/postgresql-$upstream           # the top directory of the upstream tarball
orig=${pkg}_$upstream.orig.tar.bz2

# Unpacked trees appear only by a rename, so an existing one is complete: no lock needed.
if [ -f "$tree/configure" ]; then
  echo "$tree"
  exit 0
fi

mkdir -p "$cache" || die "cannot create $cache (run as root, or set IDEM_CACHE)"
exec 9>"$cache/.lock"
flock 9
if [ -f "$tree/configure" ]; then  # another process unpacked it while we waited
  echo "$tree"
  exit 0
fi

# deb822_stanzas FILE: one line per stanza of a deb822 sources file: types|uris|suites|signed-by.
deb822_stanzas() {
  awk '
    function flush() { if (t != "" || u != "") print t "|" u "|" s "|" k; t = u = s = k = "" }
    /^[[:space:]]*#/ { next }
    /^[[:space:]]*$/ { flush(); next }
    { key = tolower($1); sub(/^[^:]*:[[:space:]]*/, ""); }
    key == "types:" { t = $0 } key == "uris:" { u = $0 }
    key == "suites:" { s = $0 } key == "signed-by:" { k = $0 }
    END { flush() }' "$1"
}

# The archive and keyring the machine already trusts: the stanza of debian.sources that
# carries the release itself (bookworm), not the security archive.
main_sources=/etc/apt/sources.list.d/debian.sources
[ -f "$main_sources" ] || die "no $main_sources to take the archive's URIs and keyring from"
IFS='|' read -r _ uris _ keyring < <(deb822_stanzas "$main_sources" \
  | awk -F'|' '$1 ~ /(^| )deb( |$)/ && $3 ~ /(^| )bookworm( |$)/' | head -n1) || true
[ -n "${uris:-}" ] || die "no 'deb' stanza for bookworm in $main_sources"

# has_deb_src: some sources file already has a deb-src entry for the suite on those URIs.
has_deb_src() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    deb822_stanzas "$f" | awk -F'|' -v suite="$suite" -v uris="$uris" '
      $1 ~ /(^| )deb-src( |$)/ && (" " $3 " ") ~ (" " suite " ") && index($2, uris) { found = 1 }
      END { exit !found }' && return 0
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -Eq "^[[:space:]]*deb-src[[:space:]].*${uris//./\\.}[/[:space:]]+${suite}[[:space:]]"
}

# apt_update: the package lists again. apt holds a lock while another apt-get runs (e.g. the
# set-up installing packages): wait for it rather than fail.
apt_update() {
  local i
  for i in 1 2 3 4 5 6; do
    apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 && return 0
    log "apt-get update failed (attempt $i); trying again in 10 s"
    sleep 10
  done
  die "apt-get update failed"
}

added=no
if ! has_deb_src; then
  [ "$(id -u)" -eq 0 ] || die "no deb-src entry for $suite: run as root once to add it"
  list=/etc/apt/sources.list.d/idempotency-src-$suite.sources
  log "adding $list (deb-src $uris $suite, as in $main_sources)"
  cat >"$list" <<EOF
# Written by the idempotency repository's scripts/pg-source.sh: PostgreSQL's upstream source.
Types: deb-src
URIs: $uris
Suites: $suite
Components: main
${keyring:+Signed-By: $keyring}
EOF
  added=yes
fi
[ "$added" = no ] || { log "apt-get update"; apt_update; }

dl=$cache/download
mkdir -p "$dl"
if [ ! -f "$dl/$orig" ]; then
  log "downloading the source package $pkg=$version into $dl"
  # apt-get source checks every file against the hashes of the signed Sources index.
  if ! (cd "$dl" && apt-get source --download-only "$pkg=$version" >&2); then
    [ "$added" = no ] || die "apt-get source $pkg=$version failed"
    # The entry was there but the lists may predate it (an update that failed or never ran).
    log "not found; updating the package lists and trying again"
    apt_update
    (cd "$dl" && apt-get source --download-only "$pkg=$version" >&2) \
      || die "apt-get source $pkg=$version failed"
  fi
fi
[ -f "$dl/$orig" ] || die "the download has no $orig (files: $(ls "$dl"))"

log "unpacking $orig into $tree"
tmp=$(mktemp -d "$cache/unpack.XXXXXX")
on_exit rm -rf "$tmp"
# As root tar would keep the tarball's owner (uid 1107) and world-writable directories.
tar --no-same-owner -xjf "$dl/$orig" -C "$tmp"
[ -f "$tmp/postgresql-$upstream/configure" ] \
  || die "$orig does not hold postgresql-$upstream/configure"
# Readable by everyone (the clusters' owner, postgres, reads the tests' input files), writable
# by its owner only: it is shared.
chmod -R a+rX,go-w "$tmp/postgresql-$upstream"
mv "$tmp/postgresql-$upstream" "$tree"
echo "$tree"
