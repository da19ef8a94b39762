#!/usr/bin/env bash
# Starts or stops a 3-master Redis Cluster on free loopback ports, for the
# tests and for trying aside by hand. Everything lives in DIR: the nodes'
# files, their PIDs, and "addrs" (host:port,host:port,host:port).
#
#   scripts/redis-cluster.sh start DIR [REPLICAS]  # prints the masters' addresses
#   scripts/redis-cluster.sh restart DIR PORT      # starts a node it started (and that died) again
#   scripts/redis-cluster.sh stop DIR              # stops exactly the processes it started
#
# REPLICAS (default 1) replicas per master let tests fail a master over.
set -euo pipefail
cmd=${1:-}; dir=${2:-}; replicas=${3:-1}; port_arg=${3:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

# is_free PORT: nothing listens on PORT.
is_free() { ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }

# run_node PORT: runs the node of PORT in the background (with the cluster
# state it saved, if it ran before) and waits until it answers PING.
run_node() {
	local port=$1
	redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
		--cluster-config-file "$dir/nodes-$port.conf" --cluster-node-timeout 2000 \
		--save "" --appendonly no --dir "$dir" --logfile "$dir/redis-$port.log" \
		--daemonize yes --pidfile "$dir/redis-$port.pid" --protected-mode no || return 1
	for _ in $(seq 50); do
		redis-cli -p "$port" ping >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	return 1
}

# start_node: starts one node on a free port (its cluster bus port, +10000,
# free too, so below 55536) and prints the port once it answers PING.
start_node() {
	for _ in $(seq 20); do
		local port=$((20000 + RANDOM % 35000))
		is_free "$port" && is_free $((port + 10000)) || continue
		if run_node "$port"; then
			echo "$port"
			return 0
		fi
		[ -f "$dir/redis-$port.pid" ] && kill "$(cat "$dir/redis-$port.pid")" 2>/dev/null || true
	done
	echo "no free port for a node" >&2
	return 1
}

case "$cmd" in
start)
	mkdir -p "$dir"
	addrs=()
	for _ in $(seq $((3 * (1 + replicas)))); do
		port=$(start_node)
		addrs+=("127.0.0.1:$port")
	done
	if ! redis-cli --cluster create "${addrs[@]}" --cluster-replicas "$replicas" --cluster-yes >"$dir/create.log" 2>&1; then
		echo "cluster create failed:" >&2
		tail -5 "$dir/create.log" >&2
		exit 1
	fi
	first=${addrs[0]##*:}
	for _ in $(seq 300); do
		ok=1
		for a in "${addrs[@]}"; do
			redis-cli -p "${a##*:}" cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
		done
		# every replica attached and in sync
		slaves=$(redis-cli -p "$first" cluster nodes 2>/dev/null | grep -c ' slave ' || true)
		[ "$slaves" = $((3 * replicas)) ] || ok=0
		for a in "${addrs[@]}"; do
			if redis-cli -p "${a##*:}" info replication 2>/dev/null | grep -q 'role:slave'; then
				redis-cli -p "${a##*:}" info replication | grep -q 'master_link_status:up' || ok=0
			fi
		done
		if [ "$ok" = 1 ]; then
			redis-cli -p "$first" cluster nodes | awk '/master/ && !/fail/ {split($2, a, "@"); print a[1]}' | sort | paste -sd, - | tee "$dir/addrs"
			exit 0
		fi
		sleep 0.1
	done
	echo "cluster did not reach state ok; see $dir" >&2
	exit 1
	;;
restart)
	[ -n "$port_arg" ] && [ -f "$dir/nodes-$port_arg.conf" ] || { echo "no node of port '$port_arg' in $dir" >&2; exit 2; }
	run_node "$port_arg"
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
