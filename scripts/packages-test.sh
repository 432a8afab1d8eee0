#!/usr/bin/env bash
# `make test-packages`: every artifact a user installs, built and tested as installed, in turn:
#   versions   scripts/version-check.py --self-test: every artifact at Cargo.toml's version
#   deb        scripts/deb-test.sh: postgresql-15-idempotency built (make deb), apt-get install
#              on the system's 15, the demo and pg_regress against it, apt-get remove
#   pgxn       scripts/pgxn-test.sh: the PGXN zip (make dist) built and installed from the
#              unpacked archive alone into a private PostgreSQL 18, CREATE EXTENSION
#   clients    scripts/client-packages-test.sh: the Python sdist and wheel, the npm tarball and
#              the Rust .crate, each installed in a fresh place and tested there
# Scratch clusters on port_of packages, HTTP services on http_port_of packages. Each step's
# time goes to build/packages/times.tsv. A step's failure stops the run.
#   scripts/packages-test.sh [STEP...]     only these steps
set -euo pipefail
NAME=packages-test
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

STEPS=(versions deb pgxn clients)
[ $# -gt 0 ] || set -- "${STEPS[@]}"
mkdir -p build/packages
times=build/packages/times.tsv
: >"$times"
t_all=$(date +%s)
for step in "$@"; do
  t0=$(date +%s)
  log "--- $step"
  case "$step" in
    versions) python3 scripts/version-check.py --self-test ;;
    deb) bash scripts/deb-test.sh ;;
    pgxn) bash scripts/pgxn-test.sh ;;
    clients) bash scripts/client-packages-test.sh ;;
    *) die "no step '$step' (steps: ${STEPS[*]})" ;;
  esac
  printf '%s\t%s\n' "$step" "$(($(date +%s) - t0))" >>"$times"
  log "$step: passed in $(($(date +%s) - t0)) s"
done
log "passed: $* in $(($(date +%s) - t_all)) s ($(tr '\t\n' '= ' <"$times"))"
