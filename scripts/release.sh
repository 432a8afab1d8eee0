#!/usr/bin/env bash
# scripts/release.sh TAG: every artifact of the release TAG (vX.Y.Z) into build/release/X.Y.Z/,
# with SHA256SUMS (docs/releasing.md). HEAD must be TAG's commit and the tracked files clean
# (RELEASE_ALLOW_DIRTY=1 skips that check, for a rehearsal), and every version must agree with
# the tag (scripts/version-check.py --tag). Then, each by its own script:
#   postgresql-NN-idempotency_X.Y.Z-R_ARCH.deb   NN in RELEASE_MAJORS (default 13..18; scripts/deb.sh)
#   idempotency-X.Y.Z.zip                        PGXN (scripts/dist.sh TAG)
#   the Python sdist and wheel, the npm tarball, the Rust .crate (scripts/client-packages.sh)
# It builds; it tests nothing (make test, with test-packages, comes before the tag) and
# publishes nothing (docs/releasing.md, Publish).
set -euo pipefail
NAME=release
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

tag=${1:?usage: scripts/release.sh vX.Y.Z}
majors=${RELEASE_MAJORS:-13 14 15 16 17 18}
[ "$(git rev-parse "$tag^{commit}" 2>/dev/null)" = "$(git rev-parse HEAD)" ] \
  || die "HEAD is not the commit of $tag (git checkout $tag first)"
if [ "${RELEASE_ALLOW_DIRTY:-0}" != 1 ] && [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  git status --short --untracked-files=no >&2
  die "tracked files differ from $tag (above)"
fi
python3 scripts/version-check.py --tag "$tag"
version=${tag#v}
out=$ROOT/build/release/$version
rm -rf "$out"
mkdir -p "$out"

for major in $majors; do
  cp "$(bash scripts/deb.sh "$major")" "$out/"
done
cp "$(bash scripts/dist.sh "$tag")" "$out/"
cp "$(bash scripts/client-packages.sh)"/* "$out/"

(cd "$out" && sha256sum -- * >SHA256SUMS)
log "release $version in $out:"
(cd "$out" && ls -l --block-size=K -- *) | awk 'NR > 1 || !/^total/ {print "  " $5 "  " $9}' >&2
echo "$out"
