#!/usr/bin/env bash
# client-npm.sh: clients/typescript's node_modules from its committed package-lock.json
# (`npm ci`, only when missing or when the lock changed), then `tsc` (the library, its tests
# and the example service into clients/typescript/dist).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT/clients/typescript"
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.installed 2>/dev/null)" != "$want" ]; then
  echo "[client-npm] npm ci in clients/typescript" >&2
  npm ci --no-audit --no-fund --loglevel=error >&2
  echo "$want" > node_modules/.installed
fi
rm -rf dist
npx --no-install tsc -p tsconfig.json
