#!/usr/bin/env bash
# A private Redis Cluster of 3 primaries and 3 replicas on loopback, for the tests.
#   redis-cluster.sh start DIR BASEPORT   # nodes on BASEPORT..BASEPORT+5, data in DIR
#   redis-cluster.sh restart DIR PORT     # start one stopped node again (it rejoins)
#   redis-cluster.sh stop DIR             # stop every node started in DIR
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?directory}

node() {
  local port=$1
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --daemonize yes \
    --dir "$dir/$port" --pidfile "$dir/$port/redis.pid" --logfile "$dir/$port/redis.log" \
    --cluster-enabled yes --cluster-config-file "$dir/$port/nodes.conf" \
    --cluster-node-timeout 2000 --save "" --appendonly no
}

case "$cmd" in
restart)
  port=${3:?port}
  node "$port"
  for _ in $(seq 1 50); do
    redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 && exit 0
    sleep 0.1
  done
  echo "node $port did not start" >&2
  exit 1
  ;;
start)
  base=${3:?base port}
  mkdir -p "$dir"
  ports=()
  for i in 0 1 2 3 4 5; do
    port=$((base + i))
    ports+=("127.0.0.1:$port")
    node "$port"
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 1 50); do
      redis-cli -h 127.0.0.1 -p "${p#*:}" ping >/dev/null 2>&1 && break
      sleep 0.1
    done
  done
  redis-cli --cluster create "${ports[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1
  # Ready when every node sees the cluster whole and every primary has a replica in sync
  # (a failover before the first sync would have nothing to promote).
  for _ in $(seq 1 300); do
    ok=1
    online=0
    for p in "${ports[@]}"; do
      redis-cli -h 127.0.0.1 -p "${p#*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
      if redis-cli -h 127.0.0.1 -p "${p#*:}" info replication 2>/dev/null | grep -q 'slave0:.*state=online'; then
        online=$((online + 1))
      fi
    done
    [ "$ok" = 1 ] && [ "$online" = 3 ] && exit 0
    sleep 0.1
  done
  echo "the cluster in $dir did not become ready" >&2
  exit 1
  ;;
stop)
  for pidfile in "$dir"/*/redis.pid; do
    [ -f "$pidfile" ] || continue
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  done
  rm -rf "$dir"
  ;;
*)
  echo "usage: $0 start DIR BASEPORT | stop DIR" >&2
  exit 2
  ;;
esac
