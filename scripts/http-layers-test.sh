#!/usr/bin/env bash
# The drop-in HTTP layers (docs/http.md, "The drop-in layer") against their conformance
# vectors (tests/http-layers): `make test-http-layers`.
#
# First `run.py --self-test` (the vectors valid against their schema, and failing against
# bare.py, the routes without a layer). Then, one framework after the other, its fixture twice
# through scripts/fixture.sh: framework i of ($ALL) on 127.0.0.1:(http_port_of http-layers)+2i
# with the default ttl, and on the next port with FIXTURE_TTL=2s; each instance with its own
# database of a fresh scratch cluster (build/http-layers/pg). The runner runs every vector
# that does not need a short ttl against the first, and the short-ttl vectors
# (--capability short-ttl) against the second. Then a table framework x passed/total.
#
#   HTTP_LAYERS="express hono"   only these frameworks (default: all five)
#   HTTP_LAYERS_START_SECONDS    how long a fixture may take to build and answer (default 900;
#                                the second instance of a framework, built already: 120)
#
# Logs and reports in build/http-layers/: <framework>.log and <framework>-ttl.log (the
# fixtures), <framework>.txt / .json and <framework>-ttl.txt / .json (the runner's lines and
# reports), self-test.log, summary.md (the closing table).
# Exit 1 when a vector failed, a fixture is missing or did not start. Everything it started
# is stopped on exit, whatever happens.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
require_installed

ALL=(express hono starlette django axum)
read -r -a FRAMEWORKS <<<"${HTTP_LAYERS:-${ALL[*]}}"
[ ${#FRAMEWORKS[@]} -gt 0 ] || die "HTTP_LAYERS names no framework"
declare -A INDEX=()
for i in "${!ALL[@]}"; do INDEX[${ALL[i]}]=$i; done
for fw in "${FRAMEWORKS[@]}"; do
  [ -n "${INDEX[$fw]:-}" ] || die "HTTP_LAYERS: unknown framework '$fw' (one of ${ALL[*]})"
done
START_SECONDS=${HTTP_LAYERS_START_SECONDS:-900}

scratch http-layers
PG_PORT=$PORT
HTTP_BASE=$(http_port_of http-layers)
VENV=$(bash scripts/client-venv.sh)
PY=$VENV/bin/python
RUN=tests/http-layers/run.py

# One run at a time in this checkout: a second one waits for the first (they share DIR and ports).
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
if ! flock -n 9; then
  log "another run of this suite holds $DIR.lock: waiting for it"
  flock -w 1800 9 || die "$DIR.lock still held after 30 minutes"
fi
T0=$SECONDS
rm -rf "$DIR"
mkdir -p "$DIR"
cluster_fresh "$DIR/pg" "$PG_PORT"
url() { echo "postgresql://postgres@localhost/$1?host=$DIR/pg&port=$PG_PORT"; }

log "the runner's self-test (log: $DIR/self-test.log)"
if ! "$PY" "$RUN" --self-test >"$DIR/self-test.log" 2>&1; then
  cat "$DIR/self-test.log" >&2
  die "run.py --self-test failed: the vectors are invalid or cannot fail"
fi
tail -n 1 "$DIR/self-test.log" >&2

# The ids of the vectors that need a short ttl.
mapfile -t TTL_IDS < <("$PY" - <<'EOF'
import json, pathlib
for f in sorted(pathlib.Path("tests/http-layers/vectors").rglob("*.json")):
    v = json.loads(f.read_text())
    if "short-ttl" in v.get("requires", []):
        print(v["id"])
EOF
)
TTL_ONLY=()
for id in "${TTL_IDS[@]}"; do TTL_ONLY+=(--only "$id"); done

# start_group LOG COMMAND...: COMMAND in a session (so process group) of its own, output in
# LOG; sets STARTED to its id, which is the group's. Stopped at exit with everything it started.
start_group() {
  local logfile=$1
  shift
  setsid "$@" >"$logfile" 2>&1 </dev/null 9>&- &
  STARTED=$!
  on_exit stop_group "$STARTED"
}

# stop_group PGID: SIGTERM to the group, SIGKILL after 10 s; nothing to do if it is gone.
stop_group() {
  local i
  kill -TERM -- "-$1" 2>/dev/null || return 0
  for ((i = 0; i < 100; i++)); do kill -0 -- "-$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$1" 2>/dev/null || true
}

# wait_fixture PID URL SECONDS: until URL/counter answers 200; false if PID ended or time ran out.
wait_fixture() {
  local pid=$1 base=$2 i
  for ((i = 0; i < $3 * 10; i++)); do
    curl -sf -o /dev/null "$base/counter" && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# start_fixture FRAMEWORK NAME PORT [TTL]: the fixture in its own database NAME; sets FIXTURE_PID.
start_fixture() {
  local fw=$1 name=$2 port=$3 ttl=${4:-} seconds=$START_SECONDS
  [ -z "$ttl" ] || seconds=120
  sql "$DIR/pg" "$PG_PORT" postgres "CREATE DATABASE $name" >/dev/null
  log "$fw: starting its fixture on 127.0.0.1:$port${ttl:+ with FIXTURE_TTL=$ttl} (log: $DIR/$name.log)"
  start_group "$DIR/$name.log" env FRAMEWORK="$fw" PORT="$port" DATABASE_URL="$(url "$name")" \
    FIXTURE_TTL="$ttl" bash scripts/fixture.sh
  FIXTURE_PID=$STARTED
  if ! wait_fixture "$FIXTURE_PID" "http://127.0.0.1:$port" "$seconds"; then
    printf -- '--- last lines of %s ---\n' "$DIR/$name.log" >&2
    tail -n 40 "$DIR/$name.log" >&2
    log "$fw: the fixture on port $port did not answer GET /counter in $seconds s"
    return 1
  fi
}

# run_vectors FRAMEWORK NAME PORT ARG...: the runner against 127.0.0.1:PORT; its lines go to
# stdout and DIR/NAME.txt, its report to DIR/NAME.json; sets PASSED and TOTAL (applicable).
run_vectors() {
  local fw=$1 name=$2 port=$3 rc=0
  shift 3
  log "$fw: the vectors against 127.0.0.1:$port $*"
  "$PY" "$RUN" --url "http://127.0.0.1:$port" --report json --out "$DIR/$name.json" "$@" \
    | tee "$DIR/$name.txt" || rc=$?
  PASSED=0 TOTAL=0
  [ -s "$DIR/$name.json" ] || return 1
  read -r PASSED TOTAL < <("$PY" -c '
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
print(s["passed"], s["passed"] + s["failed"])' "$DIR/$name.json")
  return "$rc"
}

status=0
declare -A RESULT=()
for fw in "${FRAMEWORKS[@]}"; do
  port=$((HTTP_BASE + 2 * INDEX[$fw]))
  t=$SECONDS
  if [ ! -x "tests/http-layers/fixtures/$fw/serve.sh" ]; then
    log "$fw: no fixture (tests/http-layers/fixtures/$fw/serve.sh is missing or not executable)"
    RESULT[$fw]="missing|missing|FAILED|0"
    status=1
    continue
  fi
  normal=- short=- verdict=passed
  if start_fixture "$fw" "fixture_$fw" "$port"; then
    pid_normal=$FIXTURE_PID
    if run_vectors "$fw" "$fw" "$port"; then :; else verdict=FAILED; fi
    normal="$PASSED/$TOTAL"
    if start_fixture "$fw" "fixture_${fw}_ttl" "$((port + 1))" 2s; then
      pid_ttl=$FIXTURE_PID
      if run_vectors "$fw" "$fw-ttl" "$((port + 1))" --capability short-ttl "${TTL_ONLY[@]}"; then :; else verdict=FAILED; fi
      short="$PASSED/$TOTAL"
      stop_group "$pid_ttl"
    else
      short="did not start"
      verdict=FAILED
    fi
    stop_group "$pid_normal"
  else
    normal="did not start"
    verdict=FAILED
  fi
  [ "$verdict" = passed ] || status=1
  RESULT[$fw]="$normal|$short|$verdict|$((SECONDS - t))"
done

check_server_logs "$DIR/pg/server.log" || status=1

{
  printf '| framework | vectors (default ttl) | short-ttl vectors (ttl 2s) | result | seconds |\n'
  printf '|---|---|---|---|---:|\n'
  for fw in "${FRAMEWORKS[@]}"; do
    IFS='|' read -r normal short verdict secs <<<"${RESULT[$fw]}"
    printf '| %s | %s | %s | %s | %s |\n' "$fw" "$normal" "$short" "$verdict" "$secs"
  done
} >"$DIR/summary.md"
printf '\n'
cat "$DIR/summary.md"
printf '\n'
[ "$status" -eq 0 ] || die "a framework failed its vectors, is missing or did not start ($((SECONDS - T0)) s; logs and reports in $DIR)"
log "every framework passed its vectors ($((SECONDS - T0)) s from the scratch cluster's start)"
