#!/usr/bin/env bash
# scripts/dist.sh [REF]: the PGXN distribution build/dist/idempotency-VERSION.zip of the
# committed tree at REF (default HEAD; a release makes it from its tag: docs/releasing.md);
# prints its path. `make dist` runs it.
#
# The archive is `git archive` of REF under the directory idempotency-VERSION/ (what PGXN
# expects: one top directory named after the distribution and version), so it holds exactly
# the committed files: the Makefile that builds and installs (make install PG_CONFIG=...,
# with the pinned cargo-pgrx), the crate and its workspace (a cargo workspace needs all its
# members), the SQL of every kept release, META.json, README.md, LICENSE. Checked before it
# is written out: META.json at REF against the PGXN Meta Spec with the archive's own
# scripts/meta-check.py run inside the unpacked archive, so every file META.json names is
# looked for in the archive itself; its version must be the crate's.
set -euo pipefail
NAME=dist
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

ref=${1:-HEAD}
git rev-parse --verify -q "$ref^{commit}" >/dev/null || die "no commit $ref"
version=$(git show "$ref:Cargo.toml" | sed -n 's/^version = "\(.*\)"$/\1/p' | head -n1)
[ -n "$version" ] || die "no version in $ref:Cargo.toml"
dist=idempotency-$version
out=$ROOT/build/dist/$dist.zip
mkdir -p "$ROOT/build/dist"
if [ "$ref" = HEAD ] && ! git diff --quiet HEAD -- META.json Cargo.toml Makefile sql src core idempotency.control; then
  log "note: the working tree differs from HEAD; the archive holds HEAD's committed files"
fi

tmp=$(mktemp -d)
on_exit rm -rf "$tmp"
git archive --format=zip --prefix="$dist/" -o "$tmp/$dist.zip" "$ref"

# Every entry under the one top directory, and META.json valid where it was unpacked.
mkdir "$tmp/u"
unzip -q "$tmp/$dist.zip" -d "$tmp/u"
[ "$(ls "$tmp/u")" = "$dist" ] || die "the archive's top level is not the one directory $dist: $(ls "$tmp/u" | head)"
python3 "$tmp/u/$dist/scripts/meta-check.py" "$tmp/u/$dist/META.json" >&2 \
  || die "META.json in the archive is not valid (above)"
# The upgrade scripts are installed expanded by the archive's own Makefile (scripts/lib.sh
# install, scripts/sql-include.py): every include of theirs names a block in the archive.
python3 "$tmp/u/$dist/scripts/sql-include.py" check >&2 \
  || die "an upgrade script in the archive includes a block that is not there (above)"
for f in META.json Makefile README.md LICENSE Cargo.toml Cargo.lock idempotency.control scripts/sql-include.py; do
  [ -f "$tmp/u/$dist/$f" ] || die "$f is missing from the archive"
done
mv "$tmp/$dist.zip" "$out"
log "$(basename "$out"): $(du -k "$out" | cut -f1) KiB, $(unzip -Z1 "$out" | grep -vc '/$') files, from $(git rev-parse --short "$ref")"
echo "$out"
