#!/usr/bin/env bash
# Instructions per request (`make bench-instructions`; `make test-instructions` at a tiny size;
# `make bench` runs it from bench/run.sh): the extension's requests beside what a team would
# run instead, counted by callgrind, all on one server build in one run.
#
#   bash bench/instructions.sh                      (PG_BINDIR: the PostgreSQL; default the system 15)
#   INSTR_CONFIGS="sql direct" bash bench/instructions.sh
#
# The cases (each request checks its own outcome inside the loop and raises if it is wrong; the
# cases that write are counted again afterwards):
#   new         idem_begin on a new key + idem_complete, in the block's one transaction
#   replay      idem_begin on a completed key (bench/setup.sql's replay set of INSTR_KEYS keys)
#   in_progress idem_begin on a key claimed and committed in the template with a 30-day lease,
#               never completed: in_progress, at once (idempotency.wait is 0)
#   phased      idem_begin committed on its own, then idem_complete(attempt => 1) committed on its own
#   alt         bench/alt.sql's PL/pgSQL alternative, new key + complete, one transaction
#   insert      a plain INSERT of a payment row (bench/pgbench/baseline.sql's)
#   pkselect    a primary-key SELECT of a row of a replay record's size (bench/pgbench/pkselect.sql's)
#   pkcheck     the least a replay can do in SQL: pkselect with the command's fingerprint compared
#               (bench/pgbench/pkcheck.sql's statement)
#   keyrow      the least a new key can write in SQL: its record INSERTed once, completed, with the
#               command's fingerprint (bench/pgbench/keyrow.sql's two statements as one)
# The method is scripts/lib.sh's (instruction counts): a single-user backend on a fresh copy of
# a template data directory runs a DO block of N requests; per request = (instructions at N2 -
# at N1) / (N2 - N1). The template is made by a scratch server (port_of instructions) that loads
# bench/setup.sql and bench/alt.sql, as bench/run.sh does, and the in-progress claims.
#
# Settings: INSTR_N1/INSTR_N2 (default 1000/3000), INSTR_ROUNDS (default 2: every case and size
# runs that many times, interleaved; the median is kept), INSTR_KEYS (the replay set's size, at
# least N2; default 100000, as bench/run.sh's BENCH_REPLAY_KEYS), INSTR_CONFIGS (default "sql direct"):
# the server settings the extension's cases run under, each a name (INSTR_SQL_VERSION: create
# the extension at that kept release's SQL instead of the crate's, e.g. 0.3.0, to compare a
# version's SQL with the next one's on the same library):
#   default  no setting
#   sql      -c idempotency.direct_access=off
#   direct   -c idempotency.direct_access=on
# (a config's setting must be in effect after the loop: a setting the library does not define
# fails the run). The other cases run once, under no setting. INSTR_OUT (default
# build/bench/instructions), INSTR_PROFILE and INSTR_COMMAND (printed with the results). The
# extension must be installed into that PostgreSQL (the Makefile does it). Results:
# INSTR_OUT/results.md (printed) and results.csv.
set -euo pipefail
NAME=bench-instructions
. "$(dirname "$0")/../scripts/lib.sh"
OUT=${INSTR_OUT:-$ROOT/build/bench/instructions}
case "$OUT" in /*) ;; *) OUT=$ROOT/$OUT ;; esac
N1=${INSTR_N1:-1000}
N2=${INSTR_N2:-3000}
ROUNDS=${INSTR_ROUNDS:-2}
KEYS=${INSTR_KEYS:-100000}
CONFIGS=${INSTR_CONFIGS:-sql direct}
PORT=${TEST_PORT:-$(port_of instructions)}
[ "$N2" -gt "$N1" ] || die "INSTR_N2 ($N2) must be larger than INSTR_N1 ($N1)"
[ "$KEYS" -ge "$N2" ] || die "INSTR_KEYS ($KEYS) must be at least INSTR_N2 ($N2)"
START=$(date -u +%s)

# config_setting CONFIG: the value of idempotency.direct_access that a config sets with -c
# (nothing for default).
config_setting() {
  case "$1" in
    default) ;;
    sql) echo off ;;
    direct) echo on ;;
    *) die "unknown config '$1' in INSTR_CONFIGS (default, sql, direct)" ;;
  esac
}
for config in $CONFIGS; do config_setting "$config" >/dev/null; done

require_installed
instr_outdir "$OUT"

# --- the template --------------------------------------------------------------------------
TEMPLATE=$OUT/template
cluster_fresh "$TEMPLATE" "$PORT"
q() { sql "$TEMPLATE" "$PORT" postgres "$1"; }
VERSION=$(q "SELECT version()")
log "loading bench/setup.sql ($KEYS replay keys), bench/alt.sql and $N2 in-progress claims"
[ -z "${INSTR_SQL_VERSION:-}" ] || q "CREATE EXTENSION idempotency VERSION '$INSTR_SQL_VERSION'" >/dev/null
psql_at "$TEMPLATE" "$PORT" postgres -v nreplay="$KEYS" -f "$ROOT/bench/setup.sql" >/dev/null
psql_at "$TEMPLATE" "$PORT" postgres -f "$ROOT/bench/alt.sql" >/dev/null
SQL_VERSION=$(q "SELECT extversion FROM pg_extension WHERE extname = 'idempotency'")
# One claim per statement: each commits on its own and holds no lock afterwards.
psql_at "$TEMPLATE" "$PORT" postgres >/dev/null <<EOF
SELECT format('SELECT outcome FROM idem_begin(%L, %L, jsonb_build_object(''amount'', %s, ''currency'', ''EUR'', ''customer'', %L), lease => ''30 days'')',
              'bench held', 'h-' || i, i, 'cus_' || i)
FROM generate_series(1, $N2) AS i \gexec
VACUUM ANALYZE idempotency.records;
CHECKPOINT;
EOF
expect_eq "the template's in-progress claims" \
  "$(q "SELECT count(*) FROM idempotency.records WHERE scope = 'bench held' AND state = 'p' AND lease_expires_at > now() + interval '29 days'")" "$N2"
expect_eq "the template's completed replay keys" \
  "$(q "SELECT count(*) FROM idempotency.records WHERE scope = 'bench replay' AND state = 'c'")" "$KEYS"
# A lookup by primary key must be planned as an index scan, as in a store of real size: on a
# table of a few pages the planner scans the heap instead, and every request's cost grows with
# the rows the loop adds.
for t in idempotency.records bench.replay_ref; do
  plan=$(q "EXPLAIN (COSTS OFF) SELECT * FROM $t WHERE scope = 'bench replay' AND key = 'r-1'")
  grep -q "Index Scan using" <<<"$plan" || die "a primary-key lookup in $t is not an index scan: $plan (raise INSTR_KEYS)"
done
cluster_stop "$TEMPLATE"

# --- the cases -----------------------------------------------------------------------------
# The command of every request: the one bench/setup.sql fingerprinted for the replay set.
CMD="jsonb_build_object('amount', i, 'currency', 'EUR', 'customer', 'cus_' || i)"
S="'tenant:42 POST /v1/payments'"
# raise WHAT: the statement that fails the request when WHAT is not as expected.
raise() { echo "RAISE EXCEPTION 'instructions: request % of the loop: $1', i"; }

# case_body CASE: the loop's body (PL/pgSQL, one line; i is the request's number).
case_body() {
  case "$1" in
    new) echo "SELECT outcome INTO o FROM idem_begin($S, 'n-' || i, $CMD); IF o IS DISTINCT FROM 'execute' THEN $(raise "outcome not execute"); END IF; PERFORM idem_complete($S, 'n-' || i, resource => 'payments/' || i, http_status => 201);" ;;
    replay) echo "SELECT * INTO r FROM idem_begin('bench replay', 'r-' || i, $CMD); IF r.outcome IS DISTINCT FROM 'replay' OR r.resource IS DISTINCT FROM 'payments/' || i THEN $(raise "not the replay of its record"); END IF;" ;;
    in_progress) echo "SELECT outcome INTO o FROM idem_begin('bench held', 'h-' || i, $CMD); IF o IS DISTINCT FROM 'in_progress' THEN $(raise "outcome not in_progress"); END IF;" ;;
    phased) echo "SELECT outcome INTO o FROM idem_begin($S, 'p-' || i, $CMD); IF o IS DISTINCT FROM 'execute' THEN $(raise "outcome not execute"); END IF; COMMIT; PERFORM idem_complete($S, 'p-' || i, resource => 'payments/' || i, http_status => 201, attempt => 1); COMMIT;" ;;
    alt) echo "SELECT outcome INTO o FROM bench.alt_begin($S, 'a-' || i, $CMD); IF o IS DISTINCT FROM 'execute' THEN $(raise "outcome not execute"); END IF; PERFORM bench.alt_complete($S, 'a-' || i, p_resource => 'payments/' || i, p_http_status => 201);" ;;
    insert) echo "INSERT INTO bench.payments (tenant, amount, currency) VALUES (42, i, 'EUR') RETURNING id INTO v; IF v IS DISTINCT FROM i THEN $(raise "id not i"); END IF;" ;;
    pkselect) echo "SELECT * INTO r FROM bench.replay_ref WHERE scope = 'bench replay' AND key = 'r-' || i; IF r.resource IS DISTINCT FROM 'payments/' || i THEN $(raise "not its row"); END IF;" ;;
    pkcheck) echo "SELECT *, fingerprint = idem_fingerprint($CMD) AS same_command INTO r FROM bench.replay_ref WHERE scope = 'bench replay' AND key = 'r-' || i; IF r.resource IS DISTINCT FROM 'payments/' || i OR NOT r.same_command THEN $(raise "not its row or not its command"); END IF;" ;;
    keyrow) echo "INSERT INTO bench.key_rows (created_at, expires_at, lease, owner, attempt, http_status, state, scope, key, fingerprint, resource) VALUES (now(), now() + interval '24 hours', 60000000, to_regrole(current_user), 1, 201, 'c', $S, 'k-' || i, idem_fingerprint($CMD), 'payments/' || i);" ;;
  esac
}

# case_check CASE: a query (run afterwards, in a backend of its own, not counted) whose value
# must be N: what the requests wrote. None for the cases that write nothing.
case_check() {
  case "$1" in
    new) echo "SELECT count(*) FROM idempotency.records WHERE scope = $S AND key LIKE 'n-%' AND state = 'c' AND attempt = 1;" ;;
    phased) echo "SELECT count(*) FROM idempotency.records WHERE scope = $S AND key LIKE 'p-%' AND state = 'c' AND attempt = 1;" ;;
    alt) echo "SELECT count(*) FROM bench.alt_keys WHERE scope = $S AND state = 'completed';" ;;
    insert) echo "SELECT count(*) FROM bench.payments;" ;;
    keyrow) echo "SELECT count(*) FROM bench.key_rows WHERE fingerprint = idem_fingerprint(jsonb_build_object('amount', substr(key, 3)::int, 'currency', 'EUR', 'customer', 'cus_' || substr(key, 3)));" ;;
  esac
}

# One measurement of LABEL (CASE.CONFIG): prints the instructions of the whole backend.
measure() {  # label n round
  local case=${1%%.*} config=${1#*.} n=$2 data=$OUT/run-$1-$2-$3 setting ir got
  local opts=()
  setting=
  [ "$config" = none ] || setting=$(config_setting "$config")
  [ -z "$setting" ] || opts=(-c "idempotency.direct_access=$setting")
  as_owner cp -a "$TEMPLATE/data" "$data"
  # The loop's last statement notes that every request passed its check; the same backend then
  # shows that note and the setting as pg_settings has it (a constant cost, which cancels out).
  # An undefined setting given with -c is accepted as a placeholder, which pg_settings does not
  # list; once the library is loaded it warns about it (13, 14) or removes it with a WARNING
  # (15 and later: it reserves its prefix). Either way the run fails.
  ir=$(callgrind_single "$data" "${opts[@]}" <<SQL
DO \$\$ DECLARE o text; r record; v bigint; BEGIN FOR i IN 1..$n LOOP $(case_body "$case") END LOOP; PERFORM set_config('instructions.verified', '$n', false); END \$\$;
SELECT current_setting('instructions.verified', true) AS verified, coalesce((SELECT setting FROM pg_settings WHERE name = 'idempotency.direct_access'), 'undefined') AS direct_access;
SQL
  )
  grep -q "verified = \"$n\"" "$data.out" \
    || { cat "$data.out" >&2; die "$1 n=$n: the loop did not finish"; }
  if [ -n "$setting" ]; then
    grep -q "direct_access = \"$setting\"" "$data.out" \
      || { cat "$data.out" >&2; die "$1 n=$n: idempotency.direct_access is not $setting after the loop"; }
  fi
  if [ -n "$(case_check "$case")" ]; then
    got=$(single_value "$data" "$(case_check "$case")")
    [ "$got" = "$n" ] || die "$1 n=$n: $(case_check "$case") gave '$got', expected $n"
  fi
  as_owner rm -rf "$data" "$data.out"
  echo "$ir"
}

EXT_CASES=(new replay in_progress phased)
OTHER_CASES=(alt insert pkselect pkcheck keyrow)
LABELS=()
for config in $CONFIGS; do
  for case in "${EXT_CASES[@]}"; do LABELS+=("$case.$config"); done
done
for case in "${OTHER_CASES[@]}"; do LABELS+=("$case.none"); done
instr_measure_all measure "${LABELS[@]}"

# What of a request runs inside the extension's own functions: the inclusive instructions of
# the SQL functions' entry points (idem_begin, idem_complete) in the first round's profiles, per
# request as above. The rest of a request is the loop's: the PL/pgSQL statement around the
# call, its executor, the command's jsonb_build_object, the check of the outcome.
in_extension() {  # label
  local f n total=()
  for n in "$N1" "$N2"; do
    f=$OUT/run-$1-$n-1.callgrind
    [ -f "$f" ] || die "no profile $f"
    total+=("$(callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null \
      | awk '/:idem_(begin|complete) \[/ { gsub(",", "", $1); s += $1 } END { print s + 0 }')")
  done
  [ "${total[0]}" -gt 0 ] && [ "${total[1]}" -gt "${total[0]}" ] \
    || die "$1: no instructions of idem_begin/idem_complete in the profiles (${total[*]})"
  echo $(( (total[1] - total[0]) / (N2 - N1) ))
}
declare -A EXT
for config in $CONFIGS; do
  for case in "${EXT_CASES[@]}"; do EXT[$case.$config]=$(in_extension "$case.$config"); done
done

# --- the results ---------------------------------------------------------------------------
describe() {
  case "$1" in
    new) echo 'new key: `idem_begin` + `idem_complete`, one transaction' ;;
    replay) echo 'replay: `idem_begin` on a completed key' ;;
    in_progress) echo 'in_progress: `idem_begin` on a key in progress (live lease)' ;;
    phased) echo 'phased: `idem_begin` committed, then `idem_complete(attempt => 1)` committed' ;;
    alt) echo 'plpgsql alternative (`bench/alt.sql`): new key + complete, one transaction' ;;
    insert) echo 'plain INSERT of a payment row' ;;
    pkselect) echo 'primary-key SELECT of a row of the same size' ;;
    pkcheck) echo 'the least a replay can do: that SELECT with `idem_fingerprint` of the command compared' ;;
    keyrow) echo 'the least a new key can write: its record INSERTed once, completed, with `idem_fingerprint`' ;;
  esac
}
# config_table ARRAY: the table's header and a row per extension case, a column per config,
# the figures from ARRAY (PER or EXT, keyed CASE.CONFIG).
config_table() {
  local -n figures=$1
  local case c
  printf '| case |'; for c in $CONFIGS; do printf ' %s |' "$c"; done; echo
  printf '|---|'; for _ in $CONFIGS; do printf -- '---:|'; done; echo
  for case in "${EXT_CASES[@]}"; do
    printf '| %s |' "$(describe "$case")"
    for c in $CONFIGS; do printf ' %s |' "$(thousands "${figures[$case.$c]}")"; done; echo
  done
}
thousands() { echo "$1" | sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/' -e 'ta'; }
{
  echo "case,config,instructions_per_request,in_extension_per_request,ir_n1,ir_n2,n1,n2,rounds"
  for label in "${LABELS[@]}"; do
    echo "${label%%.*},${label#*.},${PER[$label]},${EXT[$label]:-},${IR1[$label]},${IR2[$label]},$N1,$N2,$ROUNDS"
  done
} >"$OUT/results.csv"
{
  echo "# Instructions per request"
  echo
  echo "- date (UTC): $(date -u '+%Y-%m-%d %H:%M')"
  echo "- PostgreSQL: $VERSION"
  echo "- build: ${INSTR_PROFILE:-release} build of the extension; SQL of version $SQL_VERSION"
  echo "- command: \`${INSTR_COMMAND:-bash bench/instructions.sh}\`"
  echo "- method: callgrind, \`postgres --single\`, a DO loop of N requests; per request = (Ir(N2) - Ir(N1)) / (N2 - N1), N1 = $N1, N2 = $N2, median of $ROUNDS interleaved rounds (bench/README.md); $KEYS stored completed keys"
  echo "- configs: $(for c in $CONFIGS; do s=$(config_setting "$c"); printf '`%s` (%s) ' "$c" "${s:+-c idempotency.direct_access=$s}"; done | sed 's/ ()/ (no setting)/g; s/ $//')"
  echo
  config_table PER
  for case in "${OTHER_CASES[@]}"; do
    printf '| %s |' "$(describe "$case")"
    for _ in $CONFIGS; do printf ' %s |' "$(thousands "${PER[$case.none]}")"; done; echo
  done
  echo
  echo "The last five rows call neither \`idem_begin\` nor \`idem_complete\` (the last two call \`idem_fingerprint\`): each was measured once, under no setting, and stands in every column. The last two are the least a replay and a new key can do in plain SQL with the same fingerprint (no lock, no function scan; the new key's record written once): what an implementation in SQL costs at least."
  echo
  echo "Of which inside the extension's functions (\`idem_begin\` + \`idem_complete\`, inclusive, from the first round's profiles); the rest is the loop's statement around each call:"
  echo
  config_table EXT
  echo
  echo "Every request checks its outcome in the loop (a PL/pgSQL IF, counted with it); the new key, phased, alternative and INSERT cases are counted again afterwards."
  echo "Raw counts (Ir at N1 and N2) in results.csv. The whole run took $(( $(date -u +%s) - START )) s."
} >"$OUT/results.md"
cat "$OUT/results.md"
log "results: $OUT/results.md, $OUT/results.csv"
