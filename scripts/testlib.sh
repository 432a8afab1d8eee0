# Helpers shared by the operational tests (upgrade-test.sh, standby-test.sh, dump-test.sh).
# Sourced, not run. The caller sets ROOT, PG_BINDIR and NAME (used in messages) first.
#
#   sql HOST PORT DB SQL          one statement's result, unaligned, fields separated by |
#   expect_eq WHAT GOT WANT       exits the test when GOT differs from WANT
#   expect_error HOST PORT DB SQLSTATE SQL [MESSAGE_REGEX]
#                                 exits unless SQL fails with exactly that SQLSTATE (and message)
#   require_installed             the extension's control file, kept release scripts and
#                                 upgrade scripts are installed, identical to this checkout's

fail() { printf '\n%s: FAILED: %s\n' "$NAME" "$*" >&2; exit 1; }
step() { printf '%s: %s\n' "$NAME" "$*"; }

# Every client is a plain psql: no ~/.psqlrc, stop at the first error, no NOTICEs.
export PGOPTIONS="-c client_min_messages=warning"
psql_at() {
  local host=$1 port=$2 db=$3
  shift 3
  "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U postgres -d "$db" "$@"
}

sql() { psql_at "$1" "$2" "$3" -At -F '|' -c "$4"; }

expect_eq() {
  if [ "$2" != "$3" ]; then
    printf '%s: %s\n--- got:\n%s\n--- want:\n%s\n' "$NAME" "$1" "$2" "$3" >&2
    fail "$1"
  fi
}

expect_error() {
  local host=$1 port=$2 db=$3 state=$4 stmt=$5 message=${6:-} out
  if out=$(psql_at "$host" "$port" "$db" -At -v VERBOSITY=verbose -c "$stmt" 2>&1); then
    fail "expected SQLSTATE $state, but it succeeded: $stmt (output: $out)"
  fi
  # psql prints "ERROR:  <SQLSTATE>: <message>" with VERBOSITY verbose.
  local first
  first=$(grep -m1 '^ERROR:' <<<"$out" || true)
  case "$first" in
    "ERROR:  $state: "*) ;;
    *) fail "expected SQLSTATE $state from: $stmt; got: $out" ;;
  esac
  if [ -n "$message" ] && ! grep -Eq "$message" <<<"$first"; then
    fail "SQLSTATE $state as expected, but the message '$first' does not match /$message/"
  fi
}

# The test runs against what is installed: make sure that is this checkout's SQL, so that a
# stale install (an old upgrade script, a missing kept release) fails loudly instead of
# testing something else.
require_installed() {
  local extdir f
  extdir=$("$PG_BINDIR/pg_config" --sharedir)/extension
  [ -f "$extdir/idempotency.control" ] \
    || fail "the extension is not installed in $extdir (run: make install PG_CONFIG=$PG_BINDIR/pg_config)"
  for f in "$ROOT"/sql/releases/idempotency--*.sql "$ROOT"/sql/idempotency--*--*.sql; do
    [ -f "$f" ] || continue
    cmp -s "$f" "$extdir/$(basename "$f")" \
      || fail "$extdir/$(basename "$f") is missing or differs from $f (run: make install PG_CONFIG=$PG_BINDIR/pg_config)"
  done
}

# The crate's version, which is the extension's default_version.
crate_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n1
}
