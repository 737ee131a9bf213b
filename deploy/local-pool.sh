#!/usr/bin/env bash
# The main job: a local poolflow pool on loopback, end to end.
#
#   registrar ── ASAP ── primary collector (priority 100)
#       │            └── backup collector  (priority 10)
#       └──── ASAP ──── exporter (pool user, billing stream with cookies)
#
# Cookies are signed with each collector's Ed25519 key (made here with
# openssl) and checked by the exporter with the public keys.
#
# The exporter streams synthetic flow records to the pool handle; the primary
# is killed with SIGKILL mid-stream (failover to the backup, replay after the
# last cookie), then restarted (failback to the primary after draining the
# backup). Finally `collector audit` checks across both stores that every
# record of the stream is present exactly once, and prints its verdict.
#
# The pool is closed (docs/security.md): a membership authority key is made
# at start, the registrar accepts only PEs holding a certificate of it, and
# each collector gets its own Ed25519 key and certificate
# (`registrar issue-member`). Needs openssl.
#
# Usage: deploy/local-pool.sh [RECORDS] [RATE]      (default 150000 at 20000/s)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-150000}"
rate="${2:-20000}"
run="${POOLFLOW_RUN_DIR:-$(mktemp -d /tmp/poolflow.XXXXXX)}"
mkdir -p "$run"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
say() { printf '\n== %s\n' "$*"; }

# POOLFLOW_BIN_DIR: binaries built elsewhere (CI's soak uses the debug ones
# `cargo test` built); otherwise a release build.
if [ -n "${POOLFLOW_BIN_DIR:-}" ]; then
  bin="$POOLFLOW_BIN_DIR"
else
  say "building (release)"
  cargo build --release --locked -q -p registrar -p collector -p exporter
  bin="${CARGO_TARGET_DIR:-target}/release"
fi

# POOLFLOW_BASE_PORT: the registrar's port; the primary and backup
# collectors take the next two (bench/failover.sh impairs their path).
base="${POOLFLOW_BASE_PORT:-$((20000 + RANDOM % 20000))}"
registrar_port=$base
primary_port=$((base + 1))
backup_port=$((base + 2))
status_port=$((base + 3))
# Each collector signs billing cookies with its own Ed25519 key (version 2
# cookies); the exporter and every collector trust the public keys.
for c in primary backup; do
  (umask 077; openssl genpkey -algorithm ed25519 -out "$run/$c-cookie.pem")
  openssl pkey -in "$run/$c-cookie.pem" -pubout -out "$run/$c-cookie.pub"
done

say "pool membership: authority key and one key + certificate per collector"
umask 077   # private keys: readable by us only (the daemons refuse others)
openssl genpkey -algorithm ed25519 -out "$run/authority.key"
openssl pkey -in "$run/authority.key" -pubout -out "$run/authority.pub"
for c in primary backup; do
  openssl genpkey -algorithm ed25519 -out "$run/$c-member.key"
  openssl pkey -in "$run/$c-member.key" -pubout -out "$run/$c-member.pub"
  "$bin/registrar" issue-member --authority-key "$run/authority.key" \
    --pool billing-collectors --member-key "$run/$c-member.pub" --days 1 > "$run/$c-member.cert"
done
umask 022

cat > "$run/registrar.toml" <<EOF
[listen]
tcp = ""
sctp_over_udp = "127.0.0.1:$registrar_port"
status = "127.0.0.1:$status_port"
[timers]
# Sub-second detection of a dead collector: keep-alive every 200 ms,
# removed after 300 ms more without an answer.
keep_alive_period = "200ms"
keep_alive_timeout = "300ms"
[membership]
max_clock_skew = "1m"
[membership.authority_key_files]
# Closed pool: only collectors with a certificate of this authority join.
"billing-collectors" = ["$run/authority.pub"]
EOF

collector_config() { # name port priority
  cat > "$run/$1.toml" <<EOF
database = "$run/$1.sqlite"
udp_listen = []
tcp_listen = []
sctp_listen = ["127.0.0.1:$2"]
[pool]
handle = "billing-collectors"
registrars = ["sctp:127.0.0.1:$registrar_port"]
policy = "priority"
priority = $3
cookie_signing_key_file = "$run/$1-cookie.pem"
cookie_verify_key_files = ["$run/primary-cookie.pub", "$run/backup-cookie.pub"]
member_key_file = "$run/$1-member.key"
member_certificate_file = "$run/$1-member.cert"
registration_lifetime = "1m"
reregistration_interval = "20s"
EOF
}
collector_config primary "$primary_port" 100
collector_config backup "$backup_port" 10

cat > "$run/exporter.toml" <<EOF
exporter_id = 7
pool_handle = "billing-collectors"
registrars = ["sctp:127.0.0.1:$registrar_port"]
state_file = "$run/exporter.state"
observation_domain = 1
cookie_public_key_files = ["$run/primary-cookie.pub", "$run/backup-cookie.pub"]
[buffer]
memory_records = 200000
max_records = 2000000
spill_dir = "$run/spill"
[timers]
cookie_timeout = "1s"
failback_check = "200ms"
drain_timeout = "5s"
retry_interval = "200ms"
failback_holdoff = "500ms"
connect_timeout = "1s"
cache_lifetime = "500ms"
registrar_request_timeout = "1s"
fast_failure_detection = true
EOF

start_collector() { # name
  "$bin/collector" run --config "$run/$1.toml" >>"$run/$1.out" 2>>"$run/$1.log" &
  echo $!
}

say "starting registrar (ASAP over SCTP over UDP, 127.0.0.1:$registrar_port)"
"$bin/registrar" run --config "$run/registrar.toml" >"$run/registrar.out" 2>"$run/registrar.log" &
pids+=($!)
sleep 0.5
say "starting primary (priority 100) and backup (priority 10) collectors"
primary=$(start_collector primary); pids+=("$primary")
backup=$(start_collector backup); pids+=("$backup")
for _ in $(seq 50); do
  n=$("$bin/registrar" dump --status "127.0.0.1:$status_port" 2>/dev/null | grep -c 'billing-collectors\|priority' || true)
  [ "$n" -ge 2 ] && break
  sleep 0.2
done
"$bin/registrar" dump --status "127.0.0.1:$status_port" || true

secs=$(( records / rate ))
say "exporter: $records records at $rate/s (~${secs}s) to pool handle billing-collectors"
"$bin/exporter" stream --config "$run/exporter.toml" --records "$records" --rate "$rate" \
  >"$run/exporter.out" 2>"$run/exporter.log" &
exporter=$!
pids+=("$exporter")

# POOLFLOW_KILLS (default 1): how many times the primary is killed and
# restarted (bench/failover.sh uses 20; bench/soak.sh 0, to count false
# failovers). The first kill comes a third into
# the stream; each restart comes 1 s after the exporter's failover, and each
# later kill after its failback. Every wait is on the exporter's log, bounded.
kills="${POOLFLOW_KILLS:-1}"
exporter_events() { grep -c "$1" "$run/exporter.log" 2>/dev/null || true; }
wait_events() { # PATTERN COUNT WHAT
  local deadline=$((SECONDS + 60))
  until [ "$(exporter_events "$1")" -ge "$2" ]; do
    kill -0 "$exporter" 2>/dev/null || { say "exporter ended before $3"; return 1; }
    [ "$SECONDS" -lt "$deadline" ] || { say "no $3 within 60 s"; return 1; }
    sleep 0.05
  done
}
: >"$run/kill-times"
sleep $(( secs / 3 < 1 ? 1 : secs / 3 > 3 ? 3 : secs / 3 ))
for k in $(seq "$kills"); do
  if [ "$k" -gt 1 ]; then
    # "reason=Failback" (ANSI colours may sit before Failback): streaming
    # to the primary again. "FAILBACK" comes
    # earlier, when the drain of the backup starts, which on a lossy path
    # takes seconds: a kill then would hit a primary not yet streamed to.
    wait_events "[=m]Failback" "$((k - 1))" "failback $((k - 1))"
    sleep 0.5 # the stream settles on the primary before the next kill
  fi
  say "SIGKILL the primary collector mid-stream$([ "$kills" -gt 1 ] && echo " ($k of $kills)")"
  # The time first: the exporter can fail over within a millisecond of the
  # kill (ICMP port unreachable), before a `date` after it would return.
  killed_at=$(date +%s.%N)
  kill -9 "$primary"
  wait_events FAILOVER "$k" "failover $k"
  sleep 1 # the primary stays down a while: the backup takes the stream
  say "restarting the primary"
  primary=$(start_collector primary); pids+=("$primary")
  restarted_at=$(date +%s.%N)
  printf '%s %s\n' "$killed_at" "$restarted_at" >>"$run/kill-times"
done

if wait "$exporter"; then
  say "exporter finished: every record acknowledged by a cookie"
else
  say "exporter ended with an error (see $run/exporter.log)"
fi
grep -hE "FAILOVER|FAILBACK|COOKIE REFUSED|streaming to|sent|acknowledged" "$run/exporter.log" "$run/exporter.out" | tail -12 || true

say "stopping collectors (SIGTERM: deregister, drain, commit)"
kill -TERM "$primary" "$backup"
wait "$primary" "$backup" 2>/dev/null || true
pids=("${pids[0]}")

say "per-store accounting"
for c in primary backup; do
  echo "-- $c"; "$bin/collector" stats --database "$run/$c.sqlite"
done

say "audit across both stores, against the exporter's own account (state file)"
set +e
"$bin/collector" audit --database "$run/primary.sqlite" --database "$run/backup.sqlite" \
  --exporter-state "$run/exporter.state"
verdict=$?
set -e
echo "(files and logs in $run; primary last killed at ${killed_at:-never})"
exit $verdict
