# A Citus cluster on one host for scripts/citus-test.sh and bench/citus.sh: a coordinator and
# two workers, each a scratch cluster of scripts/lib.sh (cluster_start) listening on 127.0.0.1.
# Sourced after scripts/lib.sh, with PG_BINDIR the PostgreSQL where Citus and this extension
# are installed.
#
#   citus_cluster_start BASE PORT DB   nodes BASE/coordinator, BASE/worker1, BASE/worker2 on
#                                      PORT, PORT+1, PORT+2 (fresh data directories); database
#                                      DB on each with CREATE EXTENSION citus; the coordinator
#                                      registered and both workers added (metadata synced)
#   citus_cluster_stop BASE            stops the three nodes
#   citus_settings                     the postgresql.conf lines every node gets
#
# Trust authentication on loopback (initdb -A trust), as suits a scratch cluster.

citus_settings() {
  # Citus preloaded; room for many clients plus Citus's own connections between the nodes;
  # two-phase commit possible (a write to shards on both workers); durable commits (the
  # crash test); no automatic 2PC recovery (so that pg_dist_transaction shows whether a
  # transaction used two-phase commit; citus-test.sh runs the recovery itself).
  cat <<'EOF'
listen_addresses = '127.0.0.1'
shared_preload_libraries = 'citus'
max_connections = 300
max_prepared_transactions = 200
fsync = on
synchronous_commit = on
restart_after_crash = on
citus.recover_2pc_interval = -1
EOF
}

citus_cluster_stop() {
  local d
  for d in "$1/coordinator" "$1/worker1" "$1/worker2"; do
    cluster_stop "$d" || true
  done
}

citus_cluster_start() {
  local base=$1 port=$2 db=$3 i node
  local psql=("$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres)
  citus_cluster_stop "$base"
  rm -rf "$base/coordinator" "$base/worker1" "$base/worker2"
  i=0
  for node in coordinator worker1 worker2; do
    mkdir -p "$base/$node"
    PGCLUSTER_SETTINGS=$(citus_settings) cluster_start "$base/$node" $((port + i))
    "${psql[@]}" -p $((port + i)) -d postgres -c "CREATE DATABASE $db" >/dev/null
    "${psql[@]}" -p $((port + i)) -d "$db" -c "CREATE EXTENSION citus" >/dev/null
    i=$((i + 1))
  done
  "${psql[@]}" -p "$port" -d "$db" -At \
    -c "SELECT citus_set_coordinator_host('127.0.0.1', $port)" \
    -c "SELECT citus_add_node('127.0.0.1', $((port + 1)))" \
    -c "SELECT citus_add_node('127.0.0.1', $((port + 2)))" >/dev/null
}
