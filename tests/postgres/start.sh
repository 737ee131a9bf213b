#!/usr/bin/env bash
# Starts a throw-away PostgreSQL server for the tests and benchmarks, on
# loopback by default, trust authentication, data in DIR/data (created with
# initdb on the first start; a later start on the same DIR reuses it, which
# is how the outage tests restart "the same" database).
#
#   tests/postgres/start.sh DIR PORT [ADDRESS CLIENTS]
#                                       prints the connection URL on stdout
#   tests/postgres/stop.sh DIR          stops it (fast shutdown)
#
# ADDRESS and CLIENTS (a CIDR) are for the multi-host pool, whose database
# host is a network namespace (deploy/netns-pool.sh): listen on ADDRESS and
# trust connections from CLIENTS, test addresses that never leave the machine.
#
# Uses Debian's `postgresql` package; when it is missing and we are root with
# apt-get, installs it. Exit 3: PostgreSQL is not available here (callers
# skip, or fail in CI). initdb refuses to run as root, so as root the server
# runs as the package's `postgres` user.
set -euo pipefail
dir="${1:?usage: start.sh DIR PORT}"
port="${2:?usage: start.sh DIR PORT}"
address="${3:-127.0.0.1}"
clients="${4:-}"

find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  command -v pg_ctl >/dev/null && command -v initdb >/dev/null \
    && { dirname "$(command -v pg_ctl)"; return 0; }
  return 1
}

if ! bindir="$(find_bindir)"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing postgresql" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    # The package starts a cluster of its own on 5432; the tests do not use it.
    bindir="$(find_bindir)" || { echo "postgresql installed but no initdb found" >&2; exit 3; }
  else
    echo "PostgreSQL (initdb, pg_ctl) not installed" >&2
    exit 3
  fi
fi

as_owner=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  as_owner=(runuser -u postgres --)
fi

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ "$(id -u)" = 0 ]; then
  chown postgres "$dir"
  # The server must reach DIR through its parents.
  chmod o+x "$(dirname "$dir")" 2>/dev/null || true
fi
if [ ! -f "$dir/data/PG_VERSION" ]; then
  "${as_owner[@]}" "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
    || { cat "$dir/initdb.log" >&2; exit 1; }
  if [ -n "$clients" ]; then
    echo "host all all $clients trust" >>"$dir/data/pg_hba.conf"
  fi
fi
# On ADDRESS only (loopback unless given); the socket in DIR, not in
# /var/run/postgresql.
# fsync stays on: the outage tests restart the server and must find what
# it acknowledged. POOLFLOW_PG_SERVER_OPTIONS adds server options
# (bench/postgres.sh sizes max_wal_size with it).
"${as_owner[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-p $port -c listen_addresses=$address -k $dir -c max_connections=100 ${POOLFLOW_PG_SERVER_OPTIONS:-}" start >/dev/null \
  || { tail -20 "$dir/server.log" >&2; exit 1; }
echo "postgresql://postgres@$address:$port/postgres"
