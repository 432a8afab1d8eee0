#!/usr/bin/env bash
# `make bench-http-layers`: what an idempotency layer costs an Express route, four variants
# side by side in one run (bench/README.md, "The HTTP layers"). Not a test.
#
# One Express app (bench/http/layers/app.js), `POST /orders` inserting one row, served by four
# node processes on 127.0.0.1 (http_port_of bench-http-layers, +0..+3):
#   a  no idempotency
#   b  @idempotency/client/express in the route's transaction (mode 'transaction')
#   c  @idempotency/client/express phased
#   d  express-idempotency on its Redis adapter (redis-server on +5, started here)
#   e  (only when BENCH_LAYERS_VARIANTS names it, on +4) the floor of (b): its statements with a
#      trivial SELECT in place of idem_begin and idem_complete, no layer (app.js)
# on a scratch PostgreSQL (build/bench-http-layers/pg, port_of bench-http-layers). wrk drives
# each with a new Idempotency-Key per request (bench/http/layers/orders.lua). For each number of
# connections, BENCH_LAYERS_ROUNDS rounds in which every variant runs once for
# BENCH_LAYERS_SECONDS, the order rotating each round; a cell is the median of its rounds.
# After every run the script checks that the variant did what it claims (report.py check):
# every answer 201, none replayed, one order row per answer, (b)/(c) one completed record per
# row and none left in progress, (d) one Redis key with a stored response per row, (a) neither.
#
# Knobs: BENCH_LAYERS_SECONDS (6) per run, BENCH_LAYERS_ROUNDS (5), BENCH_LAYERS_CONNECTIONS
# ("1 16 64"), BENCH_LAYERS_VARIANTS ("a b c d"), BENCH_LAYERS_POOL (16: the pg pool of every
# variant), BENCH_LAYERS_WARMUP (3 s per variant), BENCH_LAYERS_REDIS_FSYNC (everysec: Redis's
# appendfsync; always|everysec|no), BENCH_LAYERS_OUT (bench/http/layers: results.md,
# results.svg), BENCH_LAYERS_NODE_OPTIONS (for the apps' node, e.g. --cpu-prof
# --cpu-prof-dir=DIR: a profile per app, written when it stops). The raw runs stay in build/bench-http-layers/runs.jsonl.
# Smoke (under a minute): BENCH_LAYERS_SECONDS=1 BENCH_LAYERS_ROUNDS=1
#   BENCH_LAYERS_CONNECTIONS="1 16" BENCH_LAYERS_WARMUP=1 BENCH_LAYERS_OUT=build/bench-http-layers/smoke
set -euo pipefail

NAME=bench-http-layers
. "$(dirname "$0")/../../../scripts/lib.sh"
HERE=$ROOT/bench/http/layers
SECS=${BENCH_LAYERS_SECONDS:-6}
ROUNDS=${BENCH_LAYERS_ROUNDS:-5}
CONNS=${BENCH_LAYERS_CONNECTIONS:-"1 16 64"}
VARIANTS=${BENCH_LAYERS_VARIANTS:-"a b c d"}
POOL=${BENCH_LAYERS_POOL:-16}
WARMUP=${BENCH_LAYERS_WARMUP:-3}
REDIS_FSYNC=${BENCH_LAYERS_REDIS_FSYNC:-everysec}
OUT=${BENCH_LAYERS_OUT:-$HERE}
case "$OUT" in /*) ;; *) OUT=$ROOT/$OUT ;; esac
DIR=$ROOT/build/bench-http-layers
PG_PORT=$(port_of bench-http-layers)
HTTP_BASE=$(http_port_of bench-http-layers)
REDIS_PORT=$((HTTP_BASE + 5))
case "$REDIS_FSYNC" in always | everysec | no) ;; *) die "BENCH_LAYERS_REDIS_FSYNC: always, everysec or no" ;; esac
T0=$(date +%s)

# --- what the bench needs ------------------------------------------------------------------
apt_install() {  # COMMAND PACKAGE
  command -v "$1" >/dev/null && return 0
  [ "$(id -u)" -eq 0 ] || die "$1 is missing: apt-get install $2"
  log "installing $2 (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}
apt_install wrk wrk
apt_install redis-server redis-server
command -v node >/dev/null || die "node is missing"

# The bench's own npm packages (express, pg, express-idempotency and its Redis adapter), from
# its committed lock file, apart from the client's: they are not the client's dependencies.
want=$(sha256sum "$HERE/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$HERE/node_modules/.installed" 2>/dev/null)" != "$want" ]; then
  log "npm ci in bench/http/layers"
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error >&2)
  echo "$want" >"$HERE/node_modules/.installed"
fi

mkdir -p "$DIR"
# Our middleware, compiled from clients/typescript/src into the bench's own directory (so that
# a test of the client running meanwhile keeps its dist/).
CLIENT_EXPRESS=
if grep -qE '[bc]' <<<"$VARIANTS"; then
  [ -d "$ROOT/clients/typescript/node_modules" ] || bash "$ROOT/scripts/client-npm.sh"
  CT=$ROOT/clients/typescript
  cat >"$DIR/tsconfig.client.json" <<EOF
{
  "extends": "$CT/tsconfig.json",
  "compilerOptions": {"outDir": "$DIR/client", "rootDir": "$CT", "typeRoots": ["$CT/node_modules/@types"],
                      "declaration": false},
  "include": ["$CT/src"]
}
EOF
  rm -rf "$DIR/client"
  log "compiling clients/typescript/src into $DIR/client"
  (cd "$CT" && npx --no-install tsc -p "$DIR/tsconfig.client.json")
  CLIENT_EXPRESS=$DIR/client/src/express.js
fi

# --- PostgreSQL, Redis, the four apps ------------------------------------------------------
# Checkpoints kept out of the runs; fsync and synchronous_commit on (PostgreSQL's defaults).
PGCLUSTER_SETTINGS="shared_buffers = 512MB
max_wal_size = 8GB
checkpoint_timeout = 30min
jit = off" cluster_fresh "$DIR/pg" "$PG_PORT"
PSQL=(psql_at "$DIR/pg" "$PG_PORT")
"${PSQL[@]}" postgres -c 'CREATE DATABASE bench'
"${PSQL[@]}" bench -c 'CREATE EXTENSION idempotency' \
  -c 'CREATE TABLE orders (id bigserial PRIMARY KEY, tenant text NOT NULL, body jsonb NOT NULL,
                           created_at timestamptz NOT NULL DEFAULT now())'

rm -rf "$DIR/redis"
mkdir -p "$DIR/redis"
cat >"$DIR/redis/redis.conf" <<EOF
# written by bench/http/layers/run.sh: variant (d)'s store
bind 127.0.0.1
port $REDIS_PORT
dir $DIR/redis
daemonize no
logfile $DIR/redis/redis.log
# persistence: the append-only file, fsync'd $REDIS_FSYNC (everysec: a crash loses up to the
# last second of keys); no RDB snapshots
appendonly yes
appendfsync $REDIS_FSYNC
save ""
EOF
redis-server "$DIR/redis/redis.conf" &
REDIS_PID=$!
on_exit stop_pid "$REDIS_PID"
REDIS=(redis-cli -h 127.0.0.1 -p "$REDIS_PORT")
for _ in $(seq 1 50); do [ "$("${REDIS[@]}" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
[ "$("${REDIS[@]}" ping)" = PONG ] || die "redis-server did not start ($DIR/redis/redis.log)"

declare -A APP_PID APP_PORT
i=0
for v in a b c d e; do
  APP_PORT[$v]=$((HTTP_BASE + i))
  i=$((i + 1))
done
for v in $VARIANTS; do
  DATABASE_HOST=$DIR/pg DATABASE_PORT=$PG_PORT DATABASE_NAME=bench POOL_SIZE=$POOL \
    REDIS_URL=redis://127.0.0.1:$REDIS_PORT CLIENT_EXPRESS=$CLIENT_EXPRESS \
    NODE_PATH=$ROOT/clients/typescript/node_modules NODE_ENV=production \
    node ${BENCH_LAYERS_NODE_OPTIONS:-} "$HERE/app.js" "$v" "${APP_PORT[$v]}" >"$DIR/app-$v.log" 2>&1 &
  APP_PID[$v]=$!
  on_exit stop_pid "${APP_PID[$v]}"
done
for v in $VARIANTS; do
  wait_http "http://127.0.0.1:${APP_PORT[$v]}/healthz" 20 || { cat "$DIR/app-$v.log" >&2; die "variant $v did not start"; }
done

# --- measuring -----------------------------------------------------------------------------
PG_MASTER=$(head -n1 "$DIR/pg/data/postmaster.pid")
# Which build of the extension the server loads (a debug build carries debug_info).
LIBRARY=$(sql "$DIR/pg" "$PG_PORT" bench "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'")/idempotency.so
if file -b "$LIBRARY" | grep -q debug_info; then LIBRARY_BUILD=debug; else LIBRARY_BUILD=release; fi
log "the extension: $LIBRARY ($LIBRARY_BUILD build)"
# CPU time (clock ticks) of processes: "user system", and for PG_MASTER its reaped children's.
cpu_ticks() {
  local p user=0 sys=0 f
  for p in "$@"; do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    f=${f##*) }  # the fields after the command name
    set -- $f
    user=$((user + ${12}))
    sys=$((sys + ${13}))
    [ "$p" != "$PG_MASTER" ] || { user=$((user + ${14})); sys=$((sys + ${15})); }
  done
  echo "$user $sys"
}
pg_pids() { echo "$PG_MASTER" $(pgrep -P "$PG_MASTER" || true); }
# order rows | records completed with 201 | other records that are not in progress ((c): a
# claim released as a retryable failure for a request whose client went away while the layer
# claimed its key, at the end of a run; the route is not called) | records in progress | transaction ids assigned so far (one
# per transaction that wrote) | WAL bytes so far. Exact at once, unlike the statistics views,
# which an idle backend may report up to 10 s late.
db_counts() {
  sql "$DIR/pg" "$PG_PORT" bench \
    "SELECT (SELECT count(*) FROM orders),
            (SELECT count(*) FROM idempotency.records WHERE state = 'c' AND http_status = 201),
            (SELECT count(*) FROM idempotency.records WHERE state <> 'p' AND http_status IS DISTINCT FROM 201),
            (SELECT count(*) FROM idempotency.records WHERE state = 'p'),
            pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
            (pg_current_wal_lsn() - '0/0')::bigint"
}
# Redis keys under a prefix | those holding a stored response
REDIS_COUNT='local n, r, cursor = 0, 0, "0"
repeat
  local res = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = res[1]
  for _, k in ipairs(res[2]) do
    n = n + 1
    local v = redis.call("GET", k)
    if v and string.find(v, "\"response\"", 1, true) then r = r + 1 end
  end
until cursor == "0"
return {n, r}'
redis_count() { "${REDIS[@]}" eval "$REDIS_COUNT" 0 "$1*" | paste -sd'|'; }

RUN_ID=$(date +%s)
RAW=$DIR/runs.jsonl
: >"$RAW"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

for v in $VARIANTS; do
  log "warm-up: $v, ${WARMUP} s at 16 connections"
  wrk -t1 -c16 -d"${WARMUP}s" --timeout 30s -s "$HERE/orders.lua" "http://127.0.0.1:${APP_PORT[$v]}" -- \
    "w$RUN_ID$v" >"$DIR/warmup-$v.json"
done
sleep 1

read -r -a ORDER <<<"$VARIANTS"
for c in $CONNS; do
  for ((r = 0; r < ROUNDS; r++)); do
    n=${#ORDER[@]}
    for ((k = 0; k < n; k++)); do
      v=${ORDER[$(((k + r) % n))]}
      prefix="L$RUN_ID$v-c$c-r$r"
      IFS='|' read -r rows0 done0 other0 _ xid0 wal0 <<<"$(db_counts)"
      read -r appu0 apps0 <<<"$(cpu_ticks "${APP_PID[$v]}")"
      read -r pgu0 pgs0 <<<"$(cpu_ticks $(pg_pids))"
      read -r redisu0 rediss0 <<<"$(cpu_ticks "$REDIS_PID")"
      json=$(wrk -t1 -c"$c" -d"${SECS}s" --timeout 30s -s "$HERE/orders.lua" \
        "http://127.0.0.1:${APP_PORT[$v]}" -- "$prefix" | tail -n1)
      load=$(cut -d' ' -f1 /proc/loadavg)
      sleep 0.5  # the requests in flight when wrk stopped, and (d)'s stored responses
      read -r appu1 apps1 <<<"$(cpu_ticks "${APP_PID[$v]}")"
      read -r pgu1 pgs1 <<<"$(cpu_ticks $(pg_pids))"
      read -r redisu1 rediss1 <<<"$(cpu_ticks "$REDIS_PID")"
      IFS='|' read -r rows1 done1 other1 held1 xid1 wal1 <<<"$(db_counts)"
      IFS='|' read -r rkeys rresp <<<"$(redis_count "$prefix")"
      python3 "$HERE/report.py" check "$v" "$c" "$r" "$json" \
        "$((rows1 - rows0))" "$((done1 - done0))" "$((other1 - other0))" "$held1" "$rkeys" "$rresp" \
        "$((appu1 - appu0)) $((apps1 - apps0))" "$((pgu1 - pgu0)) $((pgs1 - pgs0))" \
        "$((redisu1 - redisu0 + rediss1 - rediss0))" "$((xid1 - xid0))" \
        "$((wal1 - wal0))" "$load" "$(getconf CLK_TCK)" >>"$RAW" \
        || die "variant $v at $c connections, round $r: a check failed (above)"
      log "$(tail -n1 "$RAW")"
    done
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

for v in $VARIANTS; do
  if grep -qiE 'error|exception' "$DIR/app-$v.log"; then
    tail -n 20 "$DIR/app-$v.log" >&2
    die "variant $v logged errors ($DIR/app-$v.log)"
  fi
done

mkdir -p "$OUT"
COMMAND="BENCH_LAYERS_SECONDS=$SECS BENCH_LAYERS_ROUNDS=$ROUNDS BENCH_LAYERS_CONNECTIONS=\"$CONNS\" BENCH_LAYERS_VARIANTS=\"$VARIANTS\" BENCH_LAYERS_POOL=$POOL BENCH_LAYERS_WARMUP=$WARMUP BENCH_LAYERS_REDIS_FSYNC=$REDIS_FSYNC"
if [ "$PG_BINDIR" = "$SYSTEM_PG_BINDIR" ]; then
  COMMAND="$COMMAND make bench-http-layers"
else
  COMMAND="PG_BINDIR=${PG_BINDIR#"$ROOT"/} $COMMAND bash bench/http/layers/run.sh"
fi
python3 "$HERE/report.py" report "$RAW" "$OUT" \
  --command "$COMMAND" \
  --machine "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GB", $2 / 1048576}' /proc/meminfo); $("$PG_BINDIR/postgres" --version) with the $LIBRARY_BUILD build of the extension (${LIBRARY#"$ROOT"/}); node $(node --version); $(redis-server --version | awk '{print $3}' | tr -d 'v='), Redis; wrk $(wrk -v 2>&1 | head -n1 | awk '{print $2}')" \
  --load "$LOAD_START" "$LOAD_END" --pool "$POOL" --seconds "$SECS" --rounds "$ROUNDS" \
  --warmup "$WARMUP" --redis-fsync "$REDIS_FSYNC" --elapsed "$(($(date +%s) - T0))"
log "results in $OUT/results.md and $OUT/results.svg ($(($(date +%s) - T0)) s)"
