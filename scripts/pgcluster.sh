#!/usr/bin/env bash
# A private, throw-away PostgreSQL cluster for demos and concurrency tests.
#
#   scripts/pgcluster.sh start DIR PORT   initialise DIR/data if missing, start, wait for connections
#   scripts/pgcluster.sh stop DIR         fast shutdown; nothing to do if it is not running
#   scripts/pgcluster.sh status DIR       exit 0 when running
#
# Data lives in DIR/data, the unix socket in DIR, the server log in DIR/server.log.
# listen_addresses is empty, so nothing listens on TCP: connect with `-h DIR -p PORT
# -U postgres`. The superuser is always called `postgres`, whoever runs the script.
# initdb and postgres refuse to run as root, so as root the server runs as the `postgres`
# user (via sudo); otherwise as the current user.
# PG_BINDIR picks the PostgreSQL binaries (default: Debian's PostgreSQL 15).
# PGCLUSTER_SETTINGS: more postgresql.conf lines for this start, after (so overriding) the
# defaults below; e.g. scripts/citus-test.sh's nodes listen on 127.0.0.1 and preload Citus.
set -euo pipefail

PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
SUPERUSER=postgres

die() { printf 'pgcluster: %s\n' "$*" >&2; exit 1; }
log() { printf 'pgcluster: %s\n' "$*" >&2; }

usage() {
  cat >&2 <<'EOF'
usage: pgcluster.sh start DIR PORT
       pgcluster.sh stop DIR
       pgcluster.sh status DIR
EOF
  exit 2
}

# Run a command as the cluster's owner: `postgres` when we are root.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    # From /, which postgres can always enter (the caller's cwd may be /root).
    (cd / && sudo -u postgres -H -- "$@")
  else
    "$@"
  fi
}

show_log_tail() {
  if [ -f "$DIR/server.log" ]; then
    printf -- '--- last lines of %s ---\n' "$DIR/server.log" >&2
    tail -n 30 "$DIR/server.log" >&2 || true
    printf -- '---\n' >&2
  fi
}

is_running() {
  [ -f "$DIR/data/PG_VERSION" ] && as_owner "$PG_BINDIR/pg_ctl" status -D "$DIR/data" >/dev/null 2>&1
}

# As root, the postgres user must be able to reach DIR (every directory above it
# traversable) and own it (initdb creates DIR/data, the server writes its socket and log there).
make_accessible() {
  [ "$(id -u)" -eq 0 ] || return 0
  local d
  d=$(dirname "$DIR")
  while [ "$d" != "/" ]; do
    if ! sudo -u postgres test -x "$d"; then
      log "making $d traversable for the postgres user"
      chmod o+x "$d"
    fi
    d=$(dirname "$d")
  done
  chown postgres: "$DIR"
  [ ! -e "$DIR/server.log" ] || chown postgres: "$DIR/server.log"
}

cmd_start() {
  [ -x "$PG_BINDIR/pg_ctl" ] || die "no pg_ctl in PG_BINDIR=$PG_BINDIR"
  case "$PORT" in ''|*[!0-9]*) die "PORT must be a number, got '$PORT'" ;; esac
  # The socket path (DIR/.s.PGSQL.PORT) must fit in sun_path (107 bytes on Linux).
  [ $(( ${#DIR} + 12 + ${#PORT} )) -le 107 ] || die "DIR is too long for a unix socket path: $DIR"

  if is_running; then
    # An earlier run left it up: reuse it if it answers on the port asked for; otherwise
    # (another port, shutting down, stuck in recovery) stop it and start afresh.
    if "$PG_BINDIR/pg_isready" -q -h "$DIR" -p "$PORT"; then
      log "already running in $DIR on port $PORT"
      return 0
    fi
    log "a server from $DIR/data is running but not accepting connections on port $PORT: restarting it"
    cmd_stop
  fi

  make_accessible

  if [ ! -f "$DIR/data/PG_VERSION" ]; then
    [ ! -e "$DIR/data" ] || [ -z "$(ls -A "$DIR/data")" ] \
      || die "$DIR/data exists but is not a PostgreSQL data directory"
    log "initialising $DIR/data"
    # trust on the socket only: the socket sits in a private directory and nothing listens on TCP.
    # C locale and UTF8 make messages and sort order the same on every machine.
    if ! as_owner "$PG_BINDIR/initdb" -D "$DIR/data" -U "$SUPERUSER" -A trust \
        -E UTF8 --locale=C >"$DIR/initdb.log" 2>&1; then
      cat "$DIR/initdb.log" >&2
      die "initdb failed"
    fi
  fi

  # Rewritten on every start, so a later start may use another port.
  # The settings are for tests: predictable messages, time zone and logging.
  as_owner tee "$DIR/data/pgcluster.conf" >/dev/null <<EOF
# written by scripts/pgcluster.sh on every start
listen_addresses = ''
unix_socket_directories = '$DIR'
port = $PORT
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
    printf '%s\n' "$PGCLUSTER_SETTINGS" | as_owner tee -a "$DIR/data/pgcluster.conf" >/dev/null
  fi
  if ! as_owner grep -q "^include_if_exists = 'pgcluster.conf'" "$DIR/data/postgresql.conf"; then
    echo "include_if_exists = 'pgcluster.conf'" | as_owner tee -a "$DIR/data/postgresql.conf" >/dev/null
  fi

  log "starting on port $PORT (socket in $DIR, log in $DIR/server.log)"
  if ! as_owner "$PG_BINDIR/pg_ctl" start -D "$DIR/data" -l "$DIR/server.log" -w -t 60 >/dev/null; then
    show_log_tail
    die "the server did not start"
  fi
  # pg_ctl -w already waited; check that it answers where the callers will look.
  local i
  for i in $(seq 1 50); do
    if "$PG_BINDIR/pg_isready" -q -h "$DIR" -p "$PORT" -U "$SUPERUSER"; then
      return 0
    fi
    sleep 0.2
  done
  show_log_tail
  die "the server started but does not accept connections on $DIR port $PORT"
}

cmd_stop() {
  if ! is_running; then
    return 0
  fi
  log "stopping the server in $DIR"
  if as_owner "$PG_BINDIR/pg_ctl" stop -D "$DIR/data" -m fast -w -t 30 >/dev/null; then
    return 0
  fi
  # A fast shutdown can hang, e.g. when it arrives while the server is still recovering
  # from a crashed backend. It is a scratch cluster: an immediate stop loses nothing
  # that matters (the next start runs crash recovery).
  log "fast shutdown did not finish in 30 s; stopping immediately"
  if ! as_owner "$PG_BINDIR/pg_ctl" stop -D "$DIR/data" -m immediate -w -t 30 >/dev/null; then
    show_log_tail
    die "the server in $DIR did not stop"
  fi
}

[ $# -ge 2 ] || usage
ACTION=$1
if [ "$ACTION" != start ] && [ ! -d "$2" ]; then
  [ "$ACTION" = stop ] && exit 0  # nothing there, nothing running
  exit 1
fi
# An absolute path: the socket directory in the config must not depend on the server's cwd.
mkdir -p "$2"
DIR=$(cd "$2" && pwd -P)

case "$ACTION" in
  start) [ $# -eq 3 ] || usage; PORT=$3; cmd_start ;;
  stop) [ $# -eq 2 ] || usage; cmd_stop ;;
  status) [ $# -eq 2 ] || usage; is_running ;;
  *) usage ;;
esac
