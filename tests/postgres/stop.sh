#!/usr/bin/env bash
# Stops a server started by tests/postgres/start.sh DIR (fast shutdown: open
# transactions are rolled back, committed ones stay).
set -euo pipefail
dir="${1:?usage: stop.sh DIR}"
[ -f "$dir/data/postmaster.pid" ] || exit 0
bindir=""
for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
  [ -x "$d/pg_ctl" ] && { bindir="$d"; break; }
done
pg_ctl="${bindir:+$bindir/}pg_ctl"
as_owner=()
[ "$(id -u)" = 0 ] && as_owner=(runuser -u postgres --)
"${as_owner[@]}" "$pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
