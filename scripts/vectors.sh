#!/usr/bin/env bash
# Checks the frozen fingerprint vectors (core/tests/vectors/fingerprints-v1.tsv) against a
# real server: for every row, idem_canonical(command::jsonb) must equal the frozen canonical
# text and encode(idem_fingerprint(command::jsonb), 'hex') the frozen SHA-256, byte for byte.
# Runs on a scratch cluster (build/vectors; TEST_DIR / TEST_PORT move it) that it starts and
# stops again. The extension must be installed into the PostgreSQL of PG_BINDIR (default: the
# system PostgreSQL 15); any version the extension builds for can be checked this way:
#
#   bash scripts/vectors.sh
#   PG_BINDIR=$(dirname "$(bash scripts/pg-fetch.sh 16)") bash scripts/vectors.sh
#
# Prints the rows that differ (at most 20) and `vectors: N passed, M failed`; exits 1 if any
# row differs or the server read fewer rows than the file has.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

FILE=$ROOT/core/tests/vectors/fingerprints-v1.tsv
require_installed
scratch vectors
expected=$(grep -vc '^#' "$FILE")

cluster_up "$DIR" "$PORT"
sql "$DIR" "$PORT" postgres 'DROP DATABASE IF EXISTS vectors'
sql "$DIR" "$PORT" postgres 'CREATE DATABASE vectors'

# CSV mode with a quote character that never occurs raw in the file (backspace is always
# escaped in JSON), so backslashes and double quotes arrive as written.
result=$(grep -v '^#' "$FILE" | psql_at "$DIR" "$PORT" vectors -At -F $'\t' -f /dev/fd/3 3<<'SQL'
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
version=$(sql "$DIR" "$PORT" vectors 'SHOW server_version')
[ "$rows" = "$expected" ] || die "the server read $rows rows, the file has $expected"
log "PostgreSQL $version, $rows rows of ${FILE#"$ROOT"/}"
log "$((rows - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
