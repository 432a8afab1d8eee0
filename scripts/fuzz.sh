#!/usr/bin/env bash
# Fuzzes the pure core (cargo-fuzz / libFuzzer), one target after the other.
#
#   bash scripts/fuzz.sh                       every target, FUZZ_SECONDS each (default 30)
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh      a long run (make soak-fuzz)
#   FUZZ_TARGETS="numeric" bash scripts/fuzz.sh
#
# Targets (fuzz/fuzz_targets): jsonb_bytes (arbitrary bytes as a jsonb datum), model_roundtrip
# (arbitrary JSON values through the jsonb model and the canonical writer, with properties),
# numeric (arbitrary bytes as a numeric, and arbitrary spellings through numeric_in's model).
# Each starts from the committed seeds (fuzz/seeds/<target>) plus what earlier runs found
# (build/fuzz/corpus/<target>, not committed). A crash, a panic, a timeout (-timeout, 10 s
# for one input) or running out of memory (-rss_limit_mb) fails the script; libFuzzer writes
# the input to fuzz/artifacts/<target>/ (reproduce with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -s none -a <target> <file>`).
#
# Installs cargo-fuzz if missing (`cargo install cargo-fuzz --locked`, once). libFuzzer needs a nightly rustc's -Z flags: on a stable toolchain the script sets
# RUSTC_BOOTSTRAP=1. Built without a sanitizer (the core has no `unsafe`, so an out-of-bounds
# access is a panic, which libFuzzer reports as a crash) and with debug assertions (integer
# overflow panics too); that keeps the executions per second several times higher than ASan.
# Prints one line per target: executions, seconds, corpus size, crashes (always 0 on success).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
FUZZ_TARGETS=${FUZZ_TARGETS:-jsonb_bytes model_roundtrip numeric}
OUT=$ROOT/build/fuzz

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  start=$(date +%s)
  cargo install cargo-fuzz --locked
  log "cargo-fuzz installed in $(( $(date +%s) - start )) s"
fi
if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi

FLAGS=(--fuzz-dir fuzz -s none -a)
log "building the targets"
cargo fuzz build "${FLAGS[@]}"

mkdir -p "$OUT"
summary=()
for target in $FUZZ_TARGETS; do
  corpus=$OUT/corpus/$target
  mkdir -p "$corpus"
  log "$target: ${FUZZ_SECONDS}s"
  start=$(date +%s)
  status=0
  cargo fuzz run "${FLAGS[@]}" "$target" "$corpus" "$ROOT/fuzz/seeds/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$OUT/$target.log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$target.log" | tail -n 1)
  files=$(find "$corpus" -type f | wc -l)
  if [ "$status" -ne 0 ]; then
    tail -n 40 "$OUT/$target.log" >&2
    die "$target FAILED (exit $status) after ${elapsed}s; full log: $OUT/$target.log"
  fi
  summary+=("$target: ${execs:-?} executions in ${elapsed}s, corpus $files files, 0 crashes")
done
for line in "${summary[@]}"; do log "$line"; done
