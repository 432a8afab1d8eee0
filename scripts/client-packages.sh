#!/usr/bin/env bash
# scripts/client-packages.sh: the client libraries as the packages their registries take, into
# build/packages/clients/dist/ (emptied first); prints that directory.
#   idempotency_client-VERSION.tar.gz, idempotency_client-VERSION-py3-none-any.whl
#                                                                       Python: `python -m build`
#                                                                       (the wheel from the sdist)
#   idempotency-client-VERSION.tgz                                      TypeScript: `npm pack`
#   idempotency-client-VERSION.crate                                    Rust: `cargo package`
# Each is built from a copy of the client's folder holding what git would commit (tracked
# files and new ones that .gitignore does not exclude; no build output, no node_modules), so a
# build leaves nothing in clients/. The Python build runs `python -m build --no-isolation` in a
# venv of its own, build/packages/tools-venv, with `build` (PyPA's build frontend) and
# setuptools pinned below: the same tools every run, from PyPI once. npm pack runs the
# package's prepack script (tsc and the ESM entry points, clients/typescript/esm.mjs) with
# clients/typescript's node_modules (scripts/client-npm.sh). cargo package --no-verify: the
# test (scripts/client-packages-test.sh) builds the .crate on its own and runs its tests, which
# is cargo's verification and more.
set -euo pipefail
NAME=client-packages
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

BUILD_PIN=build==1.3.0
SETUPTOOLS_PIN=setuptools==80.9.0
base=$ROOT/build/packages/clients
out=$base/dist
rm -rf "$out" "$base/src"
mkdir -p "$out" "$base/src"

# copy_client DIR: what git would commit of clients/DIR, into $base/src/DIR.
copy_client() {
  (git ls-files -co --exclude-standard -z "clients/$1" | tar --null -T - -cf -) | tar -xf - -C "$base/src"
}

# --- Python ------------------------------------------------------------------------------
tools=$ROOT/build/packages/tools-venv
if ! "$tools/bin/python" -c 'import build, setuptools' 2>/dev/null \
  || [ "$(cat "$tools/.pins" 2>/dev/null)" != "$BUILD_PIN $SETUPTOOLS_PIN" ]; then
  log "the build tools into $tools ($BUILD_PIN, $SETUPTOOLS_PIN)"
  python3 -m venv --clear "$tools"
  "$tools/bin/pip" install -q --disable-pip-version-check "$BUILD_PIN" "$SETUPTOOLS_PIN" >&2
  echo "$BUILD_PIN $SETUPTOOLS_PIN" >"$tools/.pins"
fi
copy_client python
log "python -m build (sdist, then the wheel from it)"
"$tools/bin/python" -m build --no-isolation --outdir "$out" "$base/src/clients/python" >"$base/python-build.log" 2>&1 \
  || { cat "$base/python-build.log" >&2; die "python -m build failed"; }

# --- TypeScript --------------------------------------------------------------------------
# node_modules from the lock file: scripts/client-npm.sh (npm ci and a tsc pass into
# clients/typescript/dist) only when they are missing or stale, so that a dist/ that another
# suite may be reading is not rebuilt for nothing.
[ "$(cat clients/typescript/node_modules/.installed 2>/dev/null)" = "$(sha256sum clients/typescript/package-lock.json | cut -d' ' -f1)" ] \
  || bash scripts/client-npm.sh >/dev/null
copy_client typescript
ln -s "$ROOT/clients/typescript/node_modules" "$base/src/clients/typescript/node_modules"
log "npm pack"
(cd "$base/src/clients/typescript" && npm pack --pack-destination "$out" --loglevel=warn) >"$base/npm-pack.log" 2>&1 \
  || { cat "$base/npm-pack.log" >&2; die "npm pack failed"; }

# --- Rust --------------------------------------------------------------------------------
log "cargo package -p idempotency-client"
cargo package -p idempotency-client --allow-dirty --no-verify >"$base/cargo-package.log" 2>&1 \
  || { cat "$base/cargo-package.log" >&2; die "cargo package failed"; }
crate=${CARGO_TARGET_DIR:-$ROOT/target}/package/idempotency-client-$(sed -n 's/^version = "\(.*\)"$/\1/p' clients/rust/Cargo.toml | head -n1).crate
cp "$crate" "$out/"

for f in "$out"/*; do log "$(basename "$f"): $(du -k "$f" | cut -f1) KiB"; done
echo "$out"
