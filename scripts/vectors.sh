#!/usr/bin/env bash
# Checks the frozen fingerprint vectors (core/tests/vectors/fingerprints-v1.tsv) against a
# real server: for every row, idem_canonical(command::jsonb) must equal the frozen canonical
# text and encode(idem_fingerprint(command::jsonb), 'hex') the frozen SHA-256, byte for byte.
# Runs on a scratch cluster (VECTORS_DIR, default build/vectors; port VECTORS_PORT, default
# 54336) that it starts and always stops again. The extension must already be installed into
# the PostgreSQL that PG_BINDIR points at (default: the system PostgreSQL 15, as in CI after
# `make install`); any version the extension builds for can be checked this way:
#
#   bash scripts/vectors.sh
#   PG_BINDIR=$(dirname "$(bash scripts/pg-fetch.sh 16)") VECTORS_PORT=55201 bash scripts/vectors.sh
#
# Prints the rows that differ (at most 20) and `vectors: N passed, M failed`; exits 1 if any
# row differs or the server read fewer rows than the file has.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd -P)
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
DIR=${VECTORS_DIR:-$ROOT/build/vectors}
PORT=${VECTORS_PORT:-54336}
FILE=$ROOT/core/tests/vectors/fingerprints-v1.tsv

die() { printf 'vectors: %s\n' "$*" >&2; exit 1; }

sharedir=$("$PG_BINDIR/pg_config" --sharedir)
[ -f "$sharedir/extension/idempotency.control" ] \
  || die "the extension is not installed in $sharedir/extension (run: cargo pgrx install)"
expected=$(grep -vc '^#' "$FILE")

trap '"$ROOT/scripts/pgcluster.sh" stop "$DIR"' EXIT
"$ROOT/scripts/pgcluster.sh" start "$DIR" "$PORT"

psql() {
  "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres "$@"
}
psql -d postgres -c 'SET client_min_messages = warning' -c 'DROP DATABASE IF EXISTS vectors' \
  -c 'CREATE DATABASE vectors'

# CSV mode with a quote character that never occurs raw in the file (backspace is always
# escaped in JSON), so backslashes and double quotes arrive as written.
result=$(grep -v '^#' "$FILE" | psql -d vectors -At -F $'\t' -f /dev/fd/3 3<<'SQL'
CREATE EXTENSION idempotency;
CREATE TEMP TABLE v (line serial, command text, canonical text, sha256 text);
\copy v (command, canonical, sha256) FROM pstdin WITH (FORMAT csv, DELIMITER E'\t', QUOTE E'\b')
CREATE TEMP TABLE r AS
  SELECT line, command, canonical, sha256,
         idem_canonical(command::jsonb) AS got_canonical,
         encode(idem_fingerprint(command::jsonb), 'hex') AS got_sha256
    FROM v;
-- Rows that differ, then the totals.
SELECT 'DIFF', line, command, canonical, got_canonical, sha256, got_sha256
  FROM r
 WHERE got_canonical IS DISTINCT FROM canonical
    OR got_sha256 IS DISTINCT FROM sha256
    OR encode(sha256(convert_to(got_canonical, 'UTF8')), 'hex') IS DISTINCT FROM got_sha256
 ORDER BY line LIMIT 20;
SELECT 'TOTAL', count(*),
       count(*) FILTER (WHERE got_canonical IS DISTINCT FROM canonical
                           OR got_sha256 IS DISTINCT FROM sha256
                           OR encode(sha256(convert_to(got_canonical, 'UTF8')), 'hex')
                              IS DISTINCT FROM got_sha256)
  FROM r;
SQL
)

diffs=$(printf '%s\n' "$result" | grep '^DIFF' || true)
total=$(printf '%s\n' "$result" | sed -n 's/^TOTAL\t//p')
rows=${total%%$'\t'*}
failed=${total##*$'\t'}
if [ -n "$diffs" ]; then
  printf '%s\n' "$diffs" | while IFS=$'\t' read -r _ line command canonical got sha got_sha; do
    printf 'row %s: %s\n  frozen canonical %s\n  server canonical %s\n  frozen sha256 %s\n  server sha256 %s\n' \
      "$line" "$command" "$canonical" "$got" "$sha" "$got_sha"
  done
fi
version=$(psql -d vectors -At -c 'SHOW server_version')
[ "$rows" = "$expected" ] || die "the server read $rows rows, the file has $expected"
printf 'vectors: PostgreSQL %s, %s rows of %s\n' "$version" "$rows" "${FILE#"$ROOT"/}"
printf 'vectors: %s passed, %s failed\n' "$((rows - failed))" "$failed"
[ "$failed" -eq 0 ]
