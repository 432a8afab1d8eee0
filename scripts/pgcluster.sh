#!/usr/bin/env bash
# A private, throw-away PostgreSQL cluster (the command-line face of cluster_start/cluster_stop
# in scripts/lib.sh, for the torture program and for runs by hand).
#
#   scripts/pgcluster.sh start DIR PORT   initialise DIR/data if missing, start, wait for connections
#   scripts/pgcluster.sh stop DIR         fast shutdown; nothing to do if it is not running
#   scripts/pgcluster.sh status DIR       exit 0 when running
#
# Data in DIR/data, the unix socket in DIR, the server log in DIR/server.log; nothing listens
# on TCP: connect with `-h DIR -p PORT -U postgres`. As root the server runs as the `postgres`
# user. PG_BINDIR picks the PostgreSQL binaries (default: the system PostgreSQL 15).
set -euo pipefail
NAME=pgcluster
. "$(dirname "$0")/lib.sh"

usage() { sed -n '5,7p' "$0" | sed 's/^#  *scripts\//usage: /' >&2; exit 2; }

[ $# -ge 2 ] || usage
case "$1" in
  start) [ $# -eq 3 ] || usage; cluster_start "$2" "$3" ;;
  stop) [ $# -eq 2 ] || usage; cluster_stop "$2" ;;
  status) [ $# -eq 2 ] || usage; cluster_running "$2" ;;
  *) usage ;;
esac
