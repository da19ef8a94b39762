#!/usr/bin/env bash
# Makes sure a PostgreSQL with trust auth answers on loopback, for the chaos
# run and the HTTP example, and prints its URL.
#
#   scripts/postgres.sh start DIR [--private]  # prints a postgres:// URL
#   scripts/postgres.sh stop DIR               # stops what start started, if anything
#
# start uses $DATABASE_URL, or the local server (postgres@127.0.0.1:5432/test),
# when it answers; otherwise (or with --private) it installs PostgreSQL from
# Debian's packages if missing and starts a throwaway cluster of its own in
# DIR on a free port, as the postgres user when run as root.
set -euo pipefail
cmd=${1:-}; dir=${2:-}; mode=${3:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR [--private]" >&2; exit 2; }

answers() { command -v psql >/dev/null && psql "$1" -qtAc 'select 1' >/dev/null 2>&1; }

as_owner() { # runs a command as the cluster's owner
	if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi
}

case "$cmd" in
start)
	url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
	if [ "$mode" != "--private" ] && answers "$url"; then
		echo "$url"
		exit 0
	fi
	bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
	if [ -z "$bin" ]; then
		SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
		$SUDO apt-get update -qq >&2
		DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
		bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
	fi
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	mkdir -p "$dir"
	[ "$(id -u)" -ne 0 ] || chown postgres "$dir"
	as_owner "'$bin/initdb' -D '$dir/data' -A trust -U postgres >'$dir/initdb.log' 2>&1"
	as_owner "'$bin/pg_ctl' -D '$dir/data' -l '$dir/postgres.log' -w \
		-o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off\" start >/dev/null"
	as_owner "'$bin/createdb' -h 127.0.0.1 -p $port -U postgres test"
	echo "$bin" >"$dir/bin"
	echo "postgres://postgres@127.0.0.1:$port/test?sslmode=disable"
	;;
stop)
	if [ -f "$dir/bin" ]; then
		as_owner "'$(cat "$dir/bin")/pg_ctl' -D '$dir/data' -m immediate stop >/dev/null" || true
	fi
	;;
*)
	echo "usage: $0 start|stop DIR [--private]" >&2; exit 2
	;;
esac
