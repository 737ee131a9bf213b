# shellcheck shell=bash
# The multi-host pool's hosts, keys, configs and probes, shared by
# deploy/multi-host-pool.sh (a fixed run of faults) and
# tests/netns/nemesis.sh (a seeded random schedule). Source it after
# deploy/netns-hosts.sh with `run` (a directory) and `bin` (release
# binaries) set, then call pool_setup.
#
#   r1 192.0.2.1  registrar ─── ENRP ─── r2 192.0.2.2  registrar
#   c1 192.0.2.11 collector, priority 100 (primary)
#   c2 192.0.2.12 collector, priority 50
#   c3 192.0.2.13 collector, priority 10
#   e1 192.0.2.21 exporter stream (pool user, signed cookies)
#   e2 192.0.2.22 exporter relay (pool user for routers, exporter id 9)
#   rt 192.0.2.31 a router: softflowd replaying a pcap, IPFIX to e2
#   db 192.0.2.41 PostgreSQL, the shared store tier every collector ships to

collectors=(c1 c2 c3)
declare -A priority=([c1]=100 [c2]=50 [c3]=10)
declare -A pid=()
registrars='["sctp:192.0.2.1:3863", "sctp:192.0.2.2:3863"]'
postgres_url="postgresql://postgres@192.0.2.41:5432/postgres"

pool_hosts() {
  say "hosts: namespaces on one bridge"
  netns_up
  host_add r1 192.0.2.1
  host_add r2 192.0.2.2
  host_add c1 192.0.2.11
  host_add c2 192.0.2.12
  host_add c3 192.0.2.13
  host_add e1 192.0.2.21
  host_add e2 192.0.2.22
  host_add rt 192.0.2.31
  host_add db 192.0.2.41
}

pool_keys() {
  say "keys: membership authority, one member certificate and one cookie key per collector, the ENRP pool key"
  (
    umask 077
    openssl genpkey -algorithm ed25519 -out "$run/authority.key"
    openssl pkey -in "$run/authority.key" -pubout -out "$run/authority.pub"
    for c in "${collectors[@]}"; do
      openssl genpkey -algorithm ed25519 -out "$run/$c-member.key"
      openssl pkey -in "$run/$c-member.key" -pubout -out "$run/$c-member.pub"
      "$bin/registrar" issue-member --authority-key "$run/authority.key" \
        --pool billing-collectors --member-key "$run/$c-member.pub" --days 1 >"$run/$c-member.cert"
      openssl genpkey -algorithm ed25519 -out "$run/$c-cookie.pem"
      openssl pkey -in "$run/$c-cookie.pem" -pubout -out "$run/$c-cookie.pub"
    done
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$run/enrp.key"
  )
  cookie_pubs=$(printf '"%s", ' "$run"/c?-cookie.pub)
  cookie_pubs="[${cookie_pubs%, }]"
}

registrar_config() { # NAME SERVER_ID PEER_ADDRESS
  cat >"$run/$1.toml" <<EOF
server_id = $2
[listen]
tcp = ""
sctp_over_udp = "$(address "$1"):3863"
status = "127.0.0.1:3864"
[timers]
keep_alive_period = "200ms"
keep_alive_timeout = "300ms"
[enrp]
enabled = true
listen = "$(address "$1"):9901"
peers = ["$3:9901"]
peer_heartbeat_cycle = "300ms"
max_time_last_heard = "1s"
max_time_no_response = "500ms"
takeover_expiry = "500ms"
auth_key_file = "$run/enrp.key"
[membership]
max_clock_skew = "1m"
[membership.authority_key_files]
"billing-collectors" = ["$run/authority.pub"]
EOF
}

collector_config() { # NAME
  cat >"$run/$1.toml" <<EOF
database = "$run/$1.sqlite"
udp_listen = []
tcp_listen = []
sctp_listen = ["$(address "$1"):9899"]
[pool]
handle = "billing-collectors"
registrars = $registrars
policy = "priority"
priority = ${priority[$1]}
cookie_signing_key_file = "$run/$1-cookie.pem"
cookie_verify_key_files = $cookie_pubs
member_key_file = "$run/$1-member.key"
member_certificate_file = "$run/$1-member.cert"
registration_lifetime = "1m"
reregistration_interval = "20s"
[postgres]
url = "$postgres_url"
collector_name = "$1"
EOF
}

exporter_config() { # [EXTRA BUFFER KEYS]
  cat >"$run/exporter.toml" <<EOF
exporter_id = 7
pool_handle = "billing-collectors"
registrars = $registrars
state_file = "$run/exporter.state"
observation_domain = 1
cookie_public_key_files = $cookie_pubs
[buffer]
memory_records = 400000
max_records = 4000000
spill_dir = "$run/spill"
${1:-}
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
}

relay_config() { # [EXTRA BUFFER KEYS]
  cat >"$run/relay.toml" <<EOF
exporter_id = 9
pool_handle = "billing-collectors"
registrars = $registrars
metrics_listen = "$(address e2):9466"
state_file = "$run/relay.state"
cookie_public_key_files = $cookie_pubs
[buffer]
spill_dir = "$run/relay-spill"
${1:-}
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
[relay]
udp_listen = ["$(address e2):4739"]
tcp_listen = []
EOF
}

# A pcap of FLOWS one-packet UDP flows (distinct source ports and
# addresses), for softflowd on the router host to replay.
write_pcap() { # FILE FLOWS
  python3 - "$1" "$2" <<'PY'
import struct, sys
path, flows = sys.argv[1], int(sys.argv[2])
with open(path, "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for i in range(flows):
        payload = b"x" * 32
        udp = struct.pack("!HHHH", 1024 + i % 60000, 9, 8 + len(payload), 0) + payload
        src = bytes([198, 51, 100, 1 + (i // 60000) % 250])
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                         src, bytes([203, 0, 113, 7]))
        frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp
        sec, usec = 1_700_000_000 + i // 1000, (i % 1000) * 1000
        f.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
PY
}

start_relay() { start e2 exporter relay --config "$run/relay.toml" --exit-drain-timeout 60s; }
relay_listening() { on e2 ss -lun | grep -q "$(address e2):4739"; }
# Router records the relay has taken in (in its core, and synced in its
# journal with durable intake), from its Prometheus endpoint; 0 if down.
relay_taken_in() {
  on e2 python3 - "$(address e2)" <<'PY' 2>/dev/null || echo 0
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}:9466/metrics", timeout=2).read().decode()
print(next((int(float(l.split()[-1])) for l in text.splitlines()
            if l.startswith("poolflow_exporter_records_taken_in_total")), 0))
PY
}
relay_took_in() { [ "$(relay_taken_in)" -ge "$1" ]; } # COUNT

# The router on host rt: softflowd replays FLOWS one-packet flows to the
# relay (output in $run/rt.out, which names the flows it exported).
replay_router() { # FLOWS
  write_pcap "$run/router.pcap" "$1"
  on rt softflowd -d -r "$run/router.pcap" -n "$(address e2):4739" -v 10 -A milli \
    >"$run/rt.out" 2>&1
}

# Hosts, keys, the database and every config file.
pool_setup() {
  pool_hosts
  pool_keys
  say "PostgreSQL on db ($(address db)), the shared store tier"
  postgres_up
  registrar_config r1 1 192.0.2.2
  registrar_config r2 2 192.0.2.1
  local c
  for c in "${collectors[@]}"; do collector_config "$c"; done
  exporter_config
  relay_config
}

start() { # NAME DAEMON ARGS...  (host NAME runs DAEMON)
  local host=$1 daemon=$2
  shift 2
  # ip netns exec execs the daemon, so $! is the daemon itself (a shell
  # function run in the background would be a subshell in between, and a
  # signal to it would miss the daemon).
  ip netns exec "$NETNS_PREFIX-$host" "$bin/$daemon" "$@" >>"$run/$host.out" 2>>"$run/$host.log" &
  pid[$host]=$!
}
# With NETNS_FAKETIME (the path of Debian's libfaketime.so.1) a collector
# runs with its own wall clock: the offset in $run/NAME.clock ("+0",
# "-600", "+3600" seconds), re-read every second, so writing the file jumps
# the clock of a running collector (clock_jump). A namespace cannot have its
# own wall clock (time namespaces cover only the monotonic and boot clocks);
# the monotonic clock is left alone, as a real step of the wall clock would.
start_collector() { # NAME
  if [ -n "${NETNS_FAKETIME:-}" ]; then
    [ -f "$run/$1.clock" ] || echo "+0" >"$run/$1.clock"
    ip netns exec "$NETNS_PREFIX-$1" env LD_PRELOAD="$NETNS_FAKETIME" \
      FAKETIME_TIMESTAMP_FILE="$run/$1.clock" FAKETIME_CACHE_DURATION=1 \
      FAKETIME_DONT_FAKE_MONOTONIC=1 \
      "$bin/collector" run --config "$run/$1.toml" >>"$run/$1.out" 2>>"$run/$1.log" &
    pid[$1]=$!
  else
    start "$1" collector run --config "$run/$1.toml"
  fi
}
clock_jump() { # NAME SECONDS  (SECONDS signed; 0 puts the clock back)
  if [ "$2" -ge 0 ]; then echo "+$2" >"$run/$1.clock"; else echo "$2" >"$run/$1.clock"; fi
}

# PostgreSQL on host db (tests/postgres/start.sh; pg_ctl leaves the server
# running in that namespace), trusting the pool's hosts. Stopped by
# postgres_down, which every cleanup must call: a server left behind would
# outlive its namespace.
postgres_up() {
  on db bash tests/postgres/start.sh "$run/pg" 5432 "$(address db)" 192.0.2.0/24 >/dev/null
}
postgres_down() {
  if [ -f "$run/pg/data/postmaster.pid" ]; then
    bash tests/postgres/stop.sh "$run/pg" >/dev/null 2>&1 || true
  fi
}
# The audit of the shared tier (run on host db: the tier is reachable there).
audit_postgres() { # ARGS...
  on db "$bin/collector" audit --postgres "$postgres_url" --quiet "$@"
}
audit_stores() { # ARGS...
  "$bin/collector" audit --database "$run/c1.sqlite" --database "$run/c2.sqlite" \
    --database "$run/c3.sqlite" --quiet "$@"
}
# Records present, from an audit's JSON on stdin.
records_present() { python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["records_present"])'; }
# Whether PostgreSQL holds every record the three SQLite stores hold (the
# collectors ship behind their commits; call while they run).
postgres_caught_up() {
  local stores shipped
  stores=$(audit_stores --json | records_present) || return 1
  shipped=$(audit_postgres --json | records_present) || return 1
  echo "  shipped $shipped of $stores records" >>"$run/shipping.log"
  [ "$shipped" -eq "$stores" ]
}

# PE identifiers a registrar holds for the pool, sorted, one line.
handlespace() { # REGISTRAR_HOST
  on "$1" "$bin/registrar" dump --json --status 127.0.0.1:3864 2>/dev/null |
    python3 -c 'import json,sys
try:
    s = json.load(sys.stdin)
except ValueError:
    sys.exit(0)  # not answering yet: an empty handlespace
print(" ".join(sorted(str(e["id"]) for p in s["pools"] for e in p["elements"])))'
}
wait_for() { # SECONDS DESCRIPTION CMD...  (polls CMD every 100 ms)
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "netns pool: $what did not happen within the deadline" >&2
      return 1
    fi
    sleep 0.1
  done
}
registered() { # REGISTRAR_HOST COUNT
  [ "$(handlespace "$1" | wc -w)" -eq "$2" ]
}
converged() { # COUNT
  local a b
  a=$(handlespace r1)
  b=$(handlespace r2)
  [ "$(echo "$a" | wc -w)" -eq "$1" ] && [ "$a" = "$b" ]
}
exporter_says() { grep -q "$1" "$run/e1.log" "$run/e1.out" 2>/dev/null; }
failovers() { grep -c "FAILOVER" "$run/e1.log" 2>/dev/null || true; }
failbacks() { grep -c "FAILBACK" "$run/e1.log" 2>/dev/null || true; }
failovers_above() { [ "$(failovers)" -gt "$1" ]; }
failbacks_above() { [ "$(failbacks)" -gt "$1" ]; }
