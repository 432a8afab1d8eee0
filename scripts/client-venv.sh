#!/usr/bin/env bash
# client-venv.sh: the Python virtualenv of the client tests, the example services and the HTTP
# conformance suite, build/venv-clients (or $CLIENT_VENV). Installs from PyPI only what is
# missing: it reinstalls when clients/python/requirements-dev.txt or pyproject.toml changed.
# Prints the venv's path.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${CLIENT_VENV:-$ROOT/build/venv-clients}
REQ=$ROOT/clients/python/requirements-dev.txt
want=$(cat "$REQ" "$ROOT/clients/python/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$want" ]; then
  echo "[client-venv] installing into $VENV" >&2
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2
  "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT/clients/python" >&2
  echo "$want" > "$VENV/.installed"
fi
echo "$VENV"
