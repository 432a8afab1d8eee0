# The shell library of every script in this repository: the facts they share (where the
# system PostgreSQL lives, which port each suite uses), scratch clusters, psql, checks, logging
# and the one way the extension is installed.
#
# Sourced by the scripts (`. "$(dirname "$0")/lib.sh"`, after `set -euo pipefail`), or run for
# the facts the Makefile asks for:
#   bash scripts/lib.sh system-pg-config             pg_config of the system PostgreSQL 15
#   bash scripts/lib.sh port NAME [MAJOR]            the port of a suite's scratch cluster
#   bash scripts/lib.sh install PG_CONFIG PROFILE    build and install the extension (debug|release)
#   bash scripts/lib.sh install-stamp PG_CONFIG      where `install` notes what it installed
#   bash scripts/lib.sh check-logs FILE|DIR...       no crash, failed assertion or leak in server logs
#
# Sourcing sets ROOT (the checkout), NAME (the script's name, for messages; set it first to
# choose another) and PG_BINDIR (default: the system PostgreSQL 15).

# --- where things are ------------------------------------------------------------------------

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
NAME=${NAME:-$(basename "$0" .sh)}

# The system PostgreSQL: Debian 12's postgresql-15 package. The only place that names it.
SYSTEM_PG_BINDIR=/usr/lib/postgresql/15/bin
PG_BINDIR=${PG_BINDIR:-$SYSTEM_PG_BINDIR}

# Ports. Every scratch cluster listens on TEST_PORT_BASE plus the offset of its suite, so a
# second checkout runs every suite beside the first with another base (e.g. TEST_PORT_BASE=55000).
# TEST_PORT overrides the port of one run, TEST_DIR its data directory (the matrix does both).
# `cargo pgrx test` needs no port from here: pgrx 0.18 reserves a free one for each run.
TEST_PORT_BASE=${TEST_PORT_BASE:-54330}
port_of() {  # NAME [MAJOR]
  local offset
  case "$1" in
    isolation) offset=0 ;;
    upgrade) offset=1 ;;
    standby) offset=2 ;;   # the replica listens on the next port
    dump) offset=4 ;;
    regress) offset=5 ;;
    vectors) offset=6 ;;
    ops) offset=7 ;;       # its replica listens on the next port
    demo) offset=9 ;;
    serve) offset=10 ;;
    torture) offset=11 ;;
    crash) offset=12 ;;
    bench) offset=20 ;;
    bench-http) offset=21 ;;
    instructions) offset=22 ;;  # the template of bench/instructions.sh (its measurements listen on none)
    bench-guest) offset=23 ;;   # bench/guest.sh
    http) offset=30 ;;     # its hot standby listens on the next port
    client-python) offset=40 ;;
    client-typescript) offset=41 ;;
    http-examples) offset=42 ;;
    http-layers) offset=43 ;;  # scripts/http-layers-test.sh: the fixtures of the five HTTP layers
    packages) offset=44 ;;     # the installed-package tests (Debian package, PGXN archive, clients)
    bench-http-layers) offset=24 ;;  # bench/http/layers: Express with and without the layers
    citus) offset=50 ;;        # a coordinator and two workers: this port and the next two
    bench-citus) offset=53 ;;  # the same, and a plain node on the fourth
    guest) offset=60 ;;        # scripts/guest-test.sh: its runs A..E on this port and the next four
    assert) offset=65 ;;       # scripts/pg-assert.sh: its suites in turn, on this port and the next four
    matrix) offset=$((70 + ${2:?port_of matrix needs the major version})) ;;  # every suite of that version, one after the other
    *) die "no port for '$1'" ;;
  esac
  echo $((TEST_PORT_BASE + offset))
}

# The HTTP services of the suites listen on 127.0.0.1, on HTTP_PORT_BASE plus an offset (the
# scratch clusters listen on no TCP port, so only these can meet another checkout's).
HTTP_PORT_BASE=${HTTP_PORT_BASE:-18080}
http_port_of() {  # NAME
  local offset
  case "$1" in
    http) offset=0 ;;            # the service; +1 the mock processor, +2 with fault injection, +3 on the standby
    bench-http) offset=10 ;;
    client-typescript) offset=30 ;;  # the Express tests; +1, +2 the drop-in layers on Express and Hono
    http-examples) offset=40 ;;  # the Python example; +1 the TypeScript one
    http-layers) offset=50 ;;    # the five fixtures, two each (+2i, +2i+1 with FIXTURE_TTL=2s)
    bench-http-layers) offset=60 ;;  # the four Express variants (+0..+3), Redis on +5
    packages) offset=70 ;;
    *) die "no HTTP port for '$1'" ;;
  esac
  echo $((HTTP_PORT_BASE + offset))
}

# scratch SUITE: sets DIR (build/SUITE, or TEST_DIR) and PORT (port_of SUITE, or TEST_PORT).
scratch() {
  DIR=${TEST_DIR:-$ROOT/build/$1}
  case "$DIR" in /*) ;; *) DIR=$ROOT/$DIR ;; esac
  PORT=${TEST_PORT:-$(port_of "$1")}
}

# --- messages --------------------------------------------------------------------------------

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }

# on_exit COMMAND ARG...: run at exit, the last registered first, whatever the exit status
# (which they find in EXIT_STATUS).
_ON_EXIT=()
on_exit() {
  _ON_EXIT+=("$(printf '%q ' "$@")")
  trap _run_on_exit EXIT
}
_run_on_exit() {
  EXIT_STATUS=$?
  local i
  for ((i = ${#_ON_EXIT[@]} - 1; i >= 0; i--)); do
    eval "${_ON_EXIT[i]}" || EXIT_STATUS=1
  done
  exit "$EXIT_STATUS"
}

# wait_http URL SECONDS: until URL answers 2xx; false after SECONDS.
wait_http() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  return 1
}

# stop_pid PID: SIGTERM, then SIGKILL after 10 s; nothing to do if it is gone.
stop_pid() {
  local i
  kill "$1" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$1" 2>/dev/null || true
}

# --- scratch clusters ------------------------------------------------------------------------
# A private PostgreSQL of PG_BINDIR: data in DIR/data, the unix socket in DIR, the log in
# DIR/server.log, nothing listening on TCP (connect with -h DIR -p PORT -U postgres). initdb
# and postgres refuse to run as root, so as root the server runs as the `postgres` user.

SUPERUSER=postgres

# as_owner COMMAND...: run as the clusters' owner (`postgres` when we are root).
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    # From /, which postgres can always enter (the caller's cwd may be /root).
    (cd / && sudo -u postgres -H -- "$@")
  else
    "$@"
  fi
}

cluster_running() {  # DIR
  local dir
  dir=$(cd "$1" 2>/dev/null && pwd -P) || return 1
  [ -f "$dir/data/PG_VERSION" ] && as_owner "$PG_BINDIR/pg_ctl" status -D "$dir/data" >/dev/null 2>&1
}

_cluster_log_tail() {  # DIR
  if [ -f "$1/server.log" ]; then
    printf -- '--- last lines of %s ---\n' "$1/server.log" >&2
    tail -n 30 "$1/server.log" >&2 || true
    printf -- '---\n' >&2
  fi
}

# As root, the postgres user must reach DIR (every directory above it traversable) and own it.
_cluster_make_accessible() {  # DIR
  [ "$(id -u)" -eq 0 ] || return 0
  local d
  d=$(dirname "$1")
  while [ "$d" != "/" ]; do
    if ! sudo -u postgres test -x "$d"; then
      log "making $d traversable for the postgres user"
      chmod o+x "$d"
    fi
    d=$(dirname "$d")
  done
  chown postgres: "$1"
  [ ! -e "$1/server.log" ] || chown postgres: "$1/server.log"
}

# cluster_start DIR PORT: initialise DIR/data if missing, start, wait until it answers. A
# server already running there is reused if it answers on PORT, else restarted.
# PGCLUSTER_SETTINGS: more postgresql.conf lines for this start, after (so overriding) the
# defaults; e.g. the Citus nodes of scripts/citus-cluster.sh listen on 127.0.0.1 and preload
# Citus.
cluster_start() {
  local dir port=$2 i
  case "$port" in '' | *[!0-9]*) die "PORT must be a number, got '$port'" ;; esac
  mkdir -p "$1"
  dir=$(cd "$1" && pwd -P)
  [ -x "$PG_BINDIR/pg_ctl" ] || die "no pg_ctl in PG_BINDIR=$PG_BINDIR"
  # The socket path (DIR/.s.PGSQL.PORT) must fit in sun_path (107 bytes on Linux).
  [ $((${#dir} + 12 + ${#port})) -le 107 ] || die "DIR is too long for a unix socket path: $dir"

  if cluster_running "$dir"; then
    if "$PG_BINDIR/pg_isready" -q -h "$dir" -p "$port"; then
      log "a server is already running in $dir on port $port"
      return 0
    fi
    log "a server from $dir/data is running but not accepting connections on port $port: restarting it"
    cluster_stop "$dir"
  fi

  _cluster_make_accessible "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    [ ! -e "$dir/data" ] || [ -z "$(ls -A "$dir/data")" ] \
      || die "$dir/data exists but is not a PostgreSQL data directory"
    log "initialising $dir/data"
    # trust on the socket only: it sits in a private directory and nothing listens on TCP.
    # C locale and UTF8 make messages and sort order the same on every machine.
    if ! as_owner "$PG_BINDIR/initdb" -D "$dir/data" -U "$SUPERUSER" -A trust \
      -E UTF8 --locale=C >"$dir/initdb.log" 2>&1; then
      cat "$dir/initdb.log" >&2
      die "initdb failed"
    fi
  fi

  # Rewritten on every start, so that a later start may use another port. The settings are
  # for tests: predictable messages, time zone and logging.
  as_owner tee "$dir/data/pgcluster.conf" >/dev/null <<EOF
# written by scripts/lib.sh (cluster_start) on every start
listen_addresses = ''
unix_socket_directories = '$dir'
port = $port
max_connections = 100
lc_messages = 'C'
timezone = 'UTC'
log_timezone = 'UTC'
datestyle = 'iso, mdy'
log_line_prefix = '%m [%p] %q%a '
log_min_messages = warning
log_lock_waits = on
deadlock_timeout = '1s'
EOF
  if [ -n "${PGCLUSTER_SETTINGS:-}" ]; then
    printf '%s\n' "$PGCLUSTER_SETTINGS" | as_owner tee -a "$dir/data/pgcluster.conf" >/dev/null
  fi
  if ! as_owner grep -q "^include_if_exists = 'pgcluster.conf'" "$dir/data/postgresql.conf"; then
    echo "include_if_exists = 'pgcluster.conf'" | as_owner tee -a "$dir/data/postgresql.conf" >/dev/null
  fi

  log "starting PostgreSQL on port $port (socket in $dir, log in $dir/server.log)"
  if ! as_owner "$PG_BINDIR/pg_ctl" start -D "$dir/data" -l "$dir/server.log" -w -t 60 >/dev/null; then
    _cluster_log_tail "$dir"
    die "the server did not start"
  fi
  for i in $(seq 1 50); do
    "$PG_BINDIR/pg_isready" -q -h "$dir" -p "$port" -U "$SUPERUSER" && return 0
    sleep 0.2
  done
  _cluster_log_tail "$dir"
  die "the server started but does not accept connections on $dir port $port"
}

# cluster_stop DIR: fast shutdown; nothing to do if nothing runs there.
cluster_stop() {
  local dir
  cluster_running "$1" || return 0
  dir=$(cd "$1" && pwd -P)
  log "stopping the server in $dir"
  as_owner "$PG_BINDIR/pg_ctl" stop -D "$dir/data" -m fast -w -t 30 >/dev/null && return 0
  # A fast shutdown can hang, e.g. when it arrives while the server is still recovering from
  # a crashed backend. It is a scratch cluster: an immediate stop loses nothing that matters.
  log "fast shutdown did not finish in 30 s; stopping immediately"
  if ! as_owner "$PG_BINDIR/pg_ctl" stop -D "$dir/data" -m immediate -w -t 30 >/dev/null; then
    _cluster_log_tail "$dir"
    die "the server in $dir did not stop"
  fi
}

# cluster_fresh DIR PORT: a new cluster in DIR (whatever was there is removed), stopped at exit.
cluster_fresh() {
  cluster_stop "$1"
  rm -rf "$1"
  mkdir -p "$1"
  on_exit cluster_stop "$1"
  cluster_start "$1" "$2"
}

# cluster_up DIR PORT: start (or reuse) the cluster in DIR, stopped at exit.
cluster_up() {
  on_exit cluster_stop "$1"
  cluster_start "$1" "$2"
}

# --- clients and checks ----------------------------------------------------------------------

# psql_at HOST PORT DB ARG...: a plain psql (no ~/.psqlrc, stops at the first error, no NOTICEs).
psql_at() {
  local host=$1 port=$2 db=$3
  shift 3
  PGOPTIONS="-c client_min_messages=warning" \
    "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$host" -p "$port" -U "$SUPERUSER" -d "$db" "$@"
}

# sql HOST PORT DB SQL: the result, unaligned, fields separated by |.
sql() { psql_at "$1" "$2" "$3" -At -F '|' -c "$4"; }

# expect_eq WHAT GOT WANT: exits when GOT differs from WANT.
expect_eq() {
  if [ "$2" != "$3" ]; then
    printf '%s: %s\n--- got:\n%s\n--- want:\n%s\n' "$NAME" "$1" "$2" "$3" >&2
    die "$1"
  fi
}

# expect_error HOST PORT DB SQLSTATE SQL [MESSAGE_REGEX]: exits unless SQL fails with exactly
# that SQLSTATE (and a message that matches).
expect_error() {
  local host=$1 port=$2 db=$3 state=$4 stmt=$5 message=${6:-} out first
  if out=$(psql_at "$host" "$port" "$db" -At -v VERBOSITY=verbose -c "$stmt" 2>&1); then
    die "expected SQLSTATE $state, but it succeeded: $stmt (output: $out)"
  fi
  # With VERBOSITY verbose psql prints "ERROR:  <SQLSTATE>: <message>".
  first=$(grep -m1 '^ERROR:' <<<"$out" || true)
  case "$first" in
    "ERROR:  $state: "*) ;;
    *) die "expected SQLSTATE $state from: $stmt; got: $out" ;;
  esac
  if [ -n "$message" ] && ! grep -Eq "$message" <<<"$first"; then
    die "SQLSTATE $state as expected, but the message '$first' does not match /$message/"
  fi
}

# wait_true HOST PORT DB SECONDS WHAT SQL: polls SQL until it answers t; exits after SECONDS.
wait_true() {
  local i tries=$(($4 * 10))
  for ((i = 1; i <= tries; i++)); do
    [ "$(sql "$1" "$2" "$3" "$6")" = t ] && return 0
    sleep 0.1
  done
  die "$5: not so after $4 s"
}

# write_records HOST PORT DB SCOPE ROLE LAPSE: the records of every state that
# tests/fixtures/records.sql writes, under SCOPE, owned by ROLE (empty: the superuser), the
# lapsing claim's lease LAPSE long.
write_records() {
  psql_at "$1" "$2" "$3" -At -v scope="$4" -v lapse="$6" \
    ${5:+-c "SET ROLE $5"} -f "$ROOT/tests/fixtures/records.sql" >/dev/null
}

# check_records HOST PORT DB SCOPE ROLE: the records that write_records wrote, carried over
# (restored, upgraded), behave as written, for ROLE: the completion and the final failure
# replay exactly, another command is IK001 on every live key, the held claim is in progress,
# the retryable failure re-executes as attempt 2, the lapsing claim is taken over with its
# recovery point once its lease has run out, and the expired key is new again. Each call
# commits: afterwards the retryable failure and the lapsing claim are attempt 2's committed
# claims, the expired key a new claim of attempt 1.
check_records() {
  local h=$1 p=$2 db=$3 scope=$4 k
  local as="SET ROLE ${5:-postgres};"
  expect_eq "$db: the completed record replays exactly" \
    "$(sql "$h" "$p" "$db" "$as SELECT outcome, state, attempt, http_status, response, resource
        FROM idem_begin('$scope', 'completed', '{\"currency\": \"EUR\", \"amount\": \"10.00\"}')")" \
    'replay|completed|1|201|{"id": 981, "note": "naïve ✓"}|payments/981'
  expect_eq "$db: the final failure replays exactly" \
    "$(sql "$h" "$p" "$db" "$as SELECT outcome, state, attempt, http_status, response
        FROM idem_begin('$scope', 'failed-final', '{\"amount\": \"30.00\"}')")" \
    'replay|failed|1|402|{"code": "card_declined"}'
  for k in completed failed-retryable failed-final held lapsing; do
    expect_error "$h" "$p" "$db" IK001 \
      "$as SELECT * FROM idem_begin('$scope', '$k', '{\"amount\": \"999.00\"}')" \
      "already used with a different command"
  done
  expect_eq "$db: the held claim is in progress" \
    "$(sql "$h" "$p" "$db" "$as SELECT outcome, state, attempt, http_status
        FROM idem_begin('$scope', 'held', '{\"amount\": \"40.00\"}')")" \
    'in_progress|in_progress|1|409'
  expect_eq "$db: the retryable failure re-executes" \
    "$(sql "$h" "$p" "$db" "$as SELECT outcome, state, attempt
        FROM idem_begin('$scope', 'failed-retryable', '{\"amount\": \"20.00\"}')")" \
    'execute|in_progress|2'
  wait_true "$h" "$p" "$db" 10 "$db: the lapsing claim's lease ran out" \
    "SELECT clock_timestamp() > lease_expires_at FROM idem_check('$scope', 'lapsing')"
  expect_eq "$db: the lapsed claim is taken over with its recovery point" \
    "$(sql "$h" "$p" "$db" "$as SELECT outcome, state, attempt, recovery_point, recovery_data
        FROM idem_begin('$scope', 'lapsing', '{\"amount\": \"50.00\"}')")" \
    'execute|in_progress|2|charged|{"charge_id": "ch_1"}'
  expect_eq "$db: the expired key is new again" \
    "$(sql "$h" "$p" "$db" "$as SELECT outcome, attempt
        FROM idem_begin('$scope', 'expired', '{\"amount\": \"61.00\"}')")" \
    'execute|1'
}

# --- instruction counts (bench/counters.sh, bench/instructions.sh) --------------------------
# A request's instructions, counted by callgrind in a single-user backend (`postgres --single`:
# no other process, so the count is the backend's alone) on a fresh copy of a template data
# directory, running a DO block of N requests. Each measurement runs at N1 and at N2 requests,
# ROUNDS times with the measurements interleaved; the cost of a request is (the median at N2 -
# the median at N1) / (N2 - N1), so that start-up, library loading and shared memory set-up
# cancel out. Single-user mode ends a statement at a newline: each statement is one line.

# median: the median of the numbers on stdin (separated by spaces or newlines).
median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# instr_outdir OUT: OUT, emptied, for the data directories and counts (owned by the clusters'
# owner when we are root). OUT must be an absolute path.
instr_outdir() {
  command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
  case "$1" in /*) ;; *) die "instr_outdir: not an absolute path: $1" ;; esac
  rm -rf "$1"
  mkdir -p "$1"
  _cluster_make_accessible "$1"
}

# single_user DATA [OPTION...] < SQL: SQL in a single-user backend on DATA (jit off); its
# result rows and messages on stdout.
single_user() {
  local data=$1
  shift
  as_owner "$PG_BINDIR/postgres" --single -D "$data" -c jit=off "$@" postgres 2>&1
}

# single_value DATA SQL [OPTION...]: the value of the first column of the one row SQL returns.
single_value() {
  local data=$1 query=$2
  shift 2
  echo "$query" | single_user "$data" "$@" \
    | sed -n 's/^[[:space:]]*1: [^ ]* = "\(.*\)"[[:space:]]*(typeid.*/\1/p'
}

# callgrind_single DATA [OPTION...] < SQL: SQL in a single-user backend on DATA under callgrind;
# prints the instructions of the whole backend. The backend's output is kept in DATA.out,
# callgrind's in DATA.valgrind and DATA.callgrind. A backend in single-user mode goes on after
# an error, so any ERROR, FATAL, PANIC or WARNING in its output fails the measurement.
callgrind_single() {
  local data=$1 ir
  shift
  as_owner valgrind --tool=callgrind --callgrind-out-file="$data.callgrind" --log-file="$data.valgrind" \
    "$PG_BINDIR/postgres" --single -D "$data" -c jit=off "$@" postgres >"$data.out" 2>&1 \
    || { cat "$data.out" "$data.valgrind" >&2; die "the single-user backend on $data failed"; }
  if grep -Eq '(ERROR|FATAL|PANIC|WARNING): ' "$data.out"; then
    cat "$data.out" >&2
    die "the single-user backend on $data reported an error or a warning"
  fi
  ir=$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$data.callgrind")
  [ -n "$ir" ] || { cat "$data.valgrind" >&2; die "no instruction count in $data.callgrind"; }
  echo "$ir"
}

# instr_measure_all MEASURE LABEL...: `MEASURE LABEL N ROUND` (which prints the instructions of
# one measurement) for every LABEL at N1 and N2, ROUNDS times, interleaved; then for each LABEL
# IR1[LABEL] and IR2[LABEL] are the medians at N1 and N2, and PER[LABEL] the instructions per
# request. Reads N1, N2, ROUNDS.
declare -A IR1 IR2 PER
instr_measure_all() {
  local measure=$1 label n round ir
  shift
  local -A all=()
  for round in $(seq 1 "$ROUNDS"); do
    for label in "$@"; do
      for n in "$N1" "$N2"; do
        # (set -e again: bash clears it in a command substitution)
        ir=$(set -e; "$measure" "$label" "$n" "$round")
        log "round $round, $label, $n requests: $ir instructions"
        all[$label-$n]="${all[$label-$n]:-} $ir"
      done
    done
  done
  for label in "$@"; do
    IR1[$label]=$(echo "${all[$label-$N1]}" | median)
    IR2[$label]=$(echo "${all[$label-$N2]}" | median)
    PER[$label]=$(( (${IR2[$label]} - ${IR1[$label]}) / (N2 - N1) ))
  done
}

# --- server logs -----------------------------------------------------------------------------
# What in a server log is a bug whatever a suite's own checks said: a failed assertion (TRAP,
# builds with --enable-cassert), a process ended by a signal, a PANIC, a Rust abort, and the
# WARNINGs PostgreSQL prints when it cleans up after code that forgot to: resources left open
# (17 and later: "resource was not closed: ..." for buffer pins, relcache, catcache, plancache,
# snapshot and TupleDesc references, files, DSM; 13..16: "... reference leak", "buffer refcount
# leak", "temporary file leak", ...), snapshots, hash scans, SPI, parallel contexts, and memory
# written past a chunk's end (MEMORY_CONTEXT_CHECKING, on with assertions). Signal 9 is let
# through: the suites send SIGKILL themselves (ops-test.sh, the crash test); a failed
# assertion is signal 6, a segfault 11.
LOG_CRASH_RE='TRAP: |terminated by signal|PANIC: |fatal runtime error|panic in a function that cannot unwind'
LOG_LEAK_RE='WARNING: .*(resource was not closed|reference leak|refcount leak|leak: |leaked |leaking still-referenced|snapshot .* still active|seem to remain after cleanup|not closed at end-of-transaction|non-empty SPI stack|write past chunk end|problem in (alloc set|Generation|slab|Bump) )'

# check_server_logs FILE|DIR...: every such line of the files (of a DIR: each server.log under
# it) as FILE:LINE: TEXT, with the DETAIL that names what the crashed process ran; false if any.
check_server_logs() {
  local files=() f
  for f in "$@"; do
    if [ -d "$f" ]; then
      while IFS= read -r -d '' f; do files+=("$f"); done < <(find "$f" -name server.log -print0 | sort -z)
    elif [ -f "$f" ]; then
      files+=("$f")
    else
      die "check_server_logs: no file or directory $f"
    fi
  done
  [ ${#files[@]} -gt 0 ] || { log "no server log to check in $*"; return 0; }
  awk -v bad="$LOG_CRASH_RE|$LOG_LEAK_RE" -v ok='terminated by signal 9: Killed' '
    detail { detail = 0; if ($0 ~ /DETAIL:  Failed process was running/) print FILENAME ":" FNR ": " $0 }
    $0 ~ bad && $0 !~ ok { print FILENAME ":" FNR ": " $0; n++; detail = 1 }
    END { exit n > 0 }' "${files[@]}" >&2 \
    || { log "crash, assertion or leak lines above (${#files[@]} server logs read)"; return 1; }
  log "${#files[@]} server logs: no crash, failed assertion or leak warning"
}

# --- pg_regress ------------------------------------------------------------------------------

# run_pg_regress KIND HOST PORT DBNAME [TEST...]: PostgreSQL's own test driver against the
# server at HOST:PORT, in a database DBNAME that it drops and creates with the extension, so
# every run starts clean (not --use-existing: with it pg_regress neither recreates the database
# nor applies --load-extension). KIND is
#   regress     pg_regress over tests/regress/sql/*.sql, expected output in tests/regress/expected
#   isolation   pg_isolation_regress over tests/isolation/specs/*.spec (PG_ISOLATION_REGRESS
#               names one of another version, for a PostgreSQL that ships none)
# Both ship in the PGXS tree of the server's development files, not on PATH. Without TESTs,
# every one. Results go to HOST/out; on failure regression.diffs is printed. Returns the
# driver's status.
run_pg_regress() {
  local kind=$1 host=$2 port=$3 db=$4 tool inputdir pgxs f rc=0
  shift 4
  pgxs=$(dirname "$("$PG_BINDIR/pg_config" --pgxs)")/..
  inputdir=$ROOT/tests/$kind
  local tests=("$@")
  case "$kind" in
    regress)
      tool=$pgxs/test/regress/pg_regress
      [ ${#tests[@]} -gt 0 ] || for f in "$inputdir"/sql/*.sql; do tests+=("$(basename "$f" .sql)"); done
      ;;
    isolation)
      tool=${PG_ISOLATION_REGRESS:-$pgxs/test/isolation/pg_isolation_regress}
      [ ${#tests[@]} -gt 0 ] || for f in "$inputdir"/specs/*.spec; do tests+=("$(basename "$f" .spec)"); done
      # A step that hangs (a wait isolationtester cannot see, a lost wake-up) is cancelled
      # after 2 x PG_TEST_TIMEOUT_DEFAULT seconds instead of the default 6 minutes.
      export PG_TEST_TIMEOUT_DEFAULT=${PG_TEST_TIMEOUT_DEFAULT:-60}
      ;;
    *) die "run_pg_regress: KIND is regress or isolation, not '$kind'" ;;
  esac
  [ -x "$tool" ] || die "no $(basename "$tool") at $tool (are the server's development files installed?)"
  [ ${#tests[@]} -gt 0 ] || die "no tests in $inputdir"
  access_path_options
  rm -rf "$host/out"
  mkdir -p "$host/out"
  "$tool" --bindir="$PG_BINDIR" --host="$host" --port="$port" --user="$SUPERUSER" \
    --dbname="$db" --load-extension=idempotency \
    --inputdir="$inputdir" --outputdir="$host/out" "${tests[@]}" || rc=$?
  if [ $rc -ne 0 ] && [ -s "$host/out/regression.diffs" ]; then
    printf '\n===== %s =====\n' "$host/out/regression.diffs"
    cat "$host/out/regression.diffs"
  fi
  return $rc
}

# access_path_options: IDEM_ACCESS=sql makes this script's connections take the store's SQL
# path (idempotency.direct_access off): through PGOPTIONS, which libpq reads, and for a cluster
# started after this call through its configuration (PGCLUSTER_SETTINGS), for clients that
# do not read PGOPTIONS. direct (the default) leaves the setting at its default, on. The
# suites run on both paths with the same expected output.
access_path_options() {
  case "${IDEM_ACCESS:-direct}" in
    direct) ;;
    sql) export PGOPTIONS="${PGOPTIONS:+$PGOPTIONS }-c idempotency.direct_access=off"
         export PGCLUSTER_SETTINGS="${PGCLUSTER_SETTINGS:+$PGCLUSTER_SETTINGS
}idempotency.direct_access = off"
         log "the SQL path: idempotency.direct_access = off" ;;
    *) die "IDEM_ACCESS is direct or sql, not '$IDEM_ACCESS'" ;;
  esac
}

# --- the installed extension -----------------------------------------------------------------

# The crate's version, which is the extension's default_version.
crate_version() {
  sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n1
}

# require_installed: the PostgreSQL of PG_BINDIR has the extension, with this checkout's kept
# releases and upgrade scripts (a stale install fails loudly instead of testing something else).
require_installed() {
  local extdir f
  extdir=$("$PG_BINDIR/pg_config" --sharedir)/extension
  [ -f "$extdir/idempotency.control" ] \
    || die "the extension is not installed in $extdir (run: make install PG_CONFIG=$PG_BINDIR/pg_config)"
  for f in "$ROOT"/sql/releases/idempotency--*.sql; do
    [ -f "$f" ] || continue
    cmp -s "$f" "$extdir/$(basename "$f")" \
      || die "$extdir/$(basename "$f") is missing or differs from $f (run: make install PG_CONFIG=$PG_BINDIR/pg_config)"
  done
  # The upgrade scripts as installed: expanded (scripts/sql-include.py).
  for f in "$ROOT"/sql/idempotency--*--*.sql; do
    [ -f "$f" ] || continue
    python3 "$ROOT/scripts/sql-include.py" expand "$f" | cmp -s - "$extdir/$(basename "$f")" \
      || die "$extdir/$(basename "$f") is missing or differs from $f expanded (run: make install PG_CONFIG=$PG_BINDIR/pg_config)"
  done
}

# install_stamp PG_CONFIG: the path (without the profile suffix) of the file that notes which
# profile was last installed there by install_extension. `make` keys its install step on it.
install_stamp() {
  local key
  key=$(cd "$ROOT" && realpath -m "$1")
  key=${key//\//_}
  echo "build/installed/${key#_}"
}

# forget_install PG_CONFIG: something else (cargo pgrx test) installed into PG_CONFIG.
forget_install() {
  rm -f "$ROOT/$(install_stamp "$1")".*
}

# install_extension PG_CONFIG PROFILE: builds the extension (debug or release) for the
# PostgreSQL that PG_CONFIG names and installs it there. cargo pgrx install writes the
# current version's SQL and copies the upgrade scripts (sql/idempotency--A--B.sql) as they
# are; they are written again here expanded (their \include_block lines replaced by the
# blocks they name, scripts/sql-include.py), and the SQL of every earlier release, kept in
# sql/releases, is copied here, since cargo-pgrx copies only files named like upgrade scripts.
# Not root: cargo-pgrx builds as you and copies with sudo.
install_extension() {
  local pg_config=$1 profile=$2 sudo= stamp
  case "$profile" in debug | release) ;; *) die "PROFILE must be debug or release, got '$profile'" ;; esac
  [ -x "$pg_config" ] || die "no pg_config at $pg_config"
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  log "installing the $profile build into $("$pg_config" --version) ($pg_config)"
  (cd "$ROOT" && cargo pgrx install --pg-config "$pg_config" \
    ${sudo:+--sudo} $([ "$profile" = debug ] || echo --release)) >&2
  $sudo install -m 644 "$ROOT"/sql/releases/idempotency--*.sql "$("$pg_config" --sharedir)/extension/"
  $sudo python3 "$ROOT/scripts/sql-include.py" install "$("$pg_config" --sharedir)/extension"
  stamp=$ROOT/$(install_stamp "$pg_config")
  mkdir -p "$(dirname "$stamp")"
  rm -f "$stamp".*
  echo "$pg_config" >"$stamp.$profile"
}

# --- the command line ------------------------------------------------------------------------

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  NAME=lib
  case "${1:-}" in
    system-pg-config) echo "$SYSTEM_PG_BINDIR/pg_config" ;;
    port) shift; port_of "$@" ;;
    install)
      NAME=install
      [ $# -eq 3 ] || die "usage: lib.sh install PG_CONFIG PROFILE"
      install_extension "$2" "$3"
      ;;
    install-stamp) [ $# -eq 2 ] || die "usage: lib.sh install-stamp PG_CONFIG"; install_stamp "$2" ;;
    check-logs) shift; NAME=check-logs; [ $# -gt 0 ] || die "usage: lib.sh check-logs FILE|DIR..."; check_server_logs "$@" ;;
    *) sed -n '7,11p' "$0" >&2; exit 2 ;;
  esac
fi
