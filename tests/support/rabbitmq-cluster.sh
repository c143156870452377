#!/usr/bin/env bash
# A private 3-node RabbitMQ cluster on this machine, beside (never instead of) a RabbitMQ
# already running here: its own node names, ports, data, logs and configuration.
#
#   rabbitmq-cluster.sh start DIR BASEPORT    start and cluster the nodes; print one line per
#                                             node: its name, then its AMQP URL
#   rabbitmq-cluster.sh kill  DIR BASEPORT N  SIGKILL node N (1-3), as a crash would
#   rabbitmq-cluster.sh stop  DIR BASEPORT    stop every node that runs, then remove DIR
#
# Node N listens for AMQP on 127.0.0.1:BASEPORT+N-1 and for Erlang distribution on
# BASEPORT+100+N-1; the CLI tools reach a node from ports 10000 above its distribution port,
# so BASEPORT+10102 must stay below 65536. Node names carry BASEPORT, so clusters on other
# base ports can run at the same time. `stop` also cleans up after an interrupted `start`.
#
# Cookie: every node started by one user reads that user's ~/.erlang.cookie (Debian's wrapper
# runs the server and the CLI as the rabbitmq user, home /var/lib/rabbitmq), so the nodes and
# the CLI already share one; nothing is copied. RABBITMQ_ERLANG_COOKIE is deprecated.
set -Eeuo pipefail

usage() {
  echo "usage: $0 start|stop DIR BASEPORT | kill DIR BASEPORT N" >&2
  exit 2
}
[ $# -ge 3 ] || usage
cmd=$1 dir=$2 base=$3
case $base in '' | *[!0-9]*) usage ;; esac
[ "$base" -ge 1024 ] && [ "$((base + 10102))" -le 65535 ] || {
  echo "BASEPORT must be from 1024 to 55433" >&2
  exit 2
}

NODES=3
MARKER=.kivihook-rabbitmq-cluster

node_name() { echo "kh-rmq-$base-$1@localhost"; }
amqp_port() { echo $((base + $1 - 1)); }
dist_port() { echo $((base + 100 + $1 - 1)); }
node_dir() { echo "$dir/node$1"; }

log() { printf '%s\n' "rabbitmq-cluster: $*" >&2; }

# rabbitmqctl on node N, quiet unless it fails (clustering prints errors that are not).
ctl() {
  local n=$1 out
  shift
  out=$(rabbitmqctl -q -n "$(node_name "$n")" "$@" 2>&1) || {
    printf '%s\n' "$out" >&2
    log "rabbitmqctl $* on $(node_name "$n") failed"
    return 1
  }
}

# Whether node N's name is registered with epmd (its Erlang VM runs).
registered() {
  epmd -names 2>/dev/null | grep -q "^name kh-rmq-$base-$1 at port "
}

pid_of() {
  local f
  f="$(node_dir "$1")/rabbitmq.pid"
  [ -s "$f" ] && cat "$f"
}

# Whether node N's VM runs (a killed one may linger as a zombie until it is reaped).
alive() {
  local pid
  pid=$(pid_of "$1") || return 1
  [ -r "/proc/$pid/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status"
}

prepare_node() {
  local n=$1 d
  d=$(node_dir "$n")
  mkdir -p "$d/mnesia" "$d/log"
  # The system's rabbitmq.conf binds 5672; each node has a file of its own instead.
  printf 'listeners.tcp.local = 127.0.0.1:%s\n' "$(amqp_port "$n")" >"$d/rabbitmq.conf"
  # No plugins: the management plugin would bind the same port on every node.
  printf '[].\n' >"$d/enabled_plugins"
}

start_node() {
  local n=$1 d
  d=$(node_dir "$n")
  RABBITMQ_NODENAME=$(node_name "$n") \
    RABBITMQ_NODE_PORT=$(amqp_port "$n") \
    RABBITMQ_DIST_PORT=$(dist_port "$n") \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
    RABBITMQ_MNESIA_BASE="$d/mnesia" \
    RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_PID_FILE="$d/rabbitmq.pid" \
    rabbitmq-server -detached >/dev/null
}

stop_node() {
  local n=$1 pid
  registered "$n" || alive "$n" || return 0
  log "stopping $(node_name "$n")"
  pid=$(pid_of "$n" || true)
  if [ -n "$pid" ]; then
    # With the pid file, `stop` returns once the VM has exited.
    timeout 60 rabbitmqctl -q -n "$(node_name "$n")" stop "$(node_dir "$n")/rabbitmq.pid" \
      >/dev/null 2>&1 || true
  else
    timeout 60 rabbitmqctl -q -n "$(node_name "$n")" stop >/dev/null 2>&1 || true
  fi
  if alive "$n"; then kill -KILL "$pid" 2>/dev/null || true; fi
  # epmd forgets a name once its VM is gone; wait for that, so a next start can reuse it.
  for _ in $(seq 1 100); do
    registered "$n" || return 0
    sleep 0.1
  done
  log "$(node_name "$n") is still registered with epmd"
  return 1
}

# After a failed start, the end of every node's log, before `stop` removes them.
show_logs() {
  local f
  for f in "$dir"/node*/log/*.log; do
    [ -s "$f" ] || continue
    log "the end of $f:"
    tail -n 20 "$f" >&2
  done
}

# The nodes stop side by side: one by one costs seconds each.
stop_all() {
  local n status=0 pids=()
  trap - ERR
  for n in $(seq 1 $NODES); do
    stop_node "$n" &
    pids+=($!)
  done
  for n in "${pids[@]}"; do wait "$n" || status=1; done
  if [ -f "$dir/$MARKER" ]; then rm -rf "$dir"; fi
  return $status
}

case $cmd in
start)
  command -v rabbitmq-server >/dev/null || {
    echo "rabbitmq-server is not installed" >&2
    exit 1
  }
  # Left from an interrupted run on the same base port.
  stop_all
  mkdir -p "$dir"
  touch "$dir/$MARKER"
  for n in $(seq 1 $NODES); do prepare_node "$n"; done
  if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then
    # Debian's wrapper runs the server as the rabbitmq user, who must own the nodes' files
    # and be able to reach them (a parent made by `mktemp -d` is closed to it).
    chown -R rabbitmq:rabbitmq "$dir"
    su rabbitmq -s /bin/sh -c 'test -w "$0"' "$dir/node1" || {
      echo "the rabbitmq user cannot write to $dir: choose a directory it can reach" >&2
      exit 1
    }
  fi
  trap 'show_logs; stop_all; exit 1' ERR
  for n in $(seq 1 $NODES); do start_node "$n"; done
  for n in $(seq 1 $NODES); do
    # `-detached` returns before the VM exists; await_startup needs it registered.
    for _ in $(seq 1 600); do
      registered "$n" && break
      sleep 0.1
    done
    registered "$n" || {
      log "$(node_name "$n") did not start"
      false
    }
    ctl "$n" await_startup --timeout 120
  done
  first=$(node_name 1)
  for n in $(seq 2 $NODES); do
    ctl "$n" stop_app
    ctl "$n" join_cluster "$first"
    ctl "$n" start_app
  done
  ctl 1 await_online_nodes $NODES --timeout 120
  trap - ERR
  for n in $(seq 1 $NODES); do
    printf '%s amqp://guest:guest@127.0.0.1:%s/%%2f\n' "$(node_name "$n")" "$(amqp_port "$n")"
  done
  ;;
kill)
  [ $# -eq 4 ] || usage
  n=$4
  case $n in [1-3]) ;; *) usage ;; esac
  alive "$n" || {
    echo "node $n of $dir is not running" >&2
    exit 1
  }
  kill -KILL "$(pid_of "$n")"
  ;;
stop)
  stop_all
  ;;
*)
  usage
  ;;
esac
