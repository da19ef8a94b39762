#!/usr/bin/env bash
# Starts or stops a 3-master Redis Cluster on free loopback ports, for the
# tests and for trying aside by hand. Everything lives in DIR: the nodes'
# files, their PIDs, and "addrs" (host:port,host:port,host:port).
#
#   scripts/redis-cluster.sh start DIR   # prints the addresses
#   scripts/redis-cluster.sh stop DIR    # stops exactly the processes it started
set -euo pipefail
cmd=${1:-}; dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

free_port() {
	# A free port below 55536: the cluster bus listens on port + 10000.
	for p in $(seq 20000 54999 | shuf -n 500); do
		(exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null || { echo "$p"; return; }
	done
	return 1
}

case "$cmd" in
start)
	mkdir -p "$dir"
	addrs=()
	for i in 1 2 3; do
		port=$(free_port)
		redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
			--cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 2000 \
			--save "" --appendonly no --dir "$dir" --logfile "$dir/redis-$port.log" \
			--daemonize yes --pidfile "$dir/redis-$port.pid" --protected-mode no
		addrs+=("127.0.0.1:$port")
	done
	for a in "${addrs[@]}"; do
		for _ in $(seq 50); do redis-cli -p "${a##*:}" ping >/dev/null 2>&1 && break; sleep 0.1; done
	done
	redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1
	for _ in $(seq 100); do
		if redis-cli -p "${addrs[0]##*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
			(IFS=,; echo "${addrs[*]}") | tee "$dir/addrs"
			exit 0
		fi
		sleep 0.1
	done
	echo "cluster did not reach state ok; see $dir" >&2
	exit 1
	;;
stop)
	for f in "$dir"/redis-*.pid; do
		[ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
	done
	;;
*)
	echo "usage: $0 start|stop DIR" >&2; exit 2
	;;
esac
