#!/usr/bin/env bash
# The main job across hosts: the local pool's run (deploy/local-pool.sh) with
# every daemon on its own host, the hosts being network namespaces on one
# bridge (deploy/netns-hosts.sh, addresses from 192.0.2.0/24), and faults
# between hosts on the way.
#
#   r1 192.0.2.1  registrar ─── ENRP ─── r2 192.0.2.2  registrar
#   c1 192.0.2.11 collector, priority 100 (primary)
#   c2 192.0.2.12 collector, priority 50
#   c3 192.0.2.13 collector, priority 10
#   e1 192.0.2.21 exporter stream (pool user, signed cookies)
#   e2 192.0.2.22 exporter relay, fed by rt 192.0.2.31 (softflowd)
#   db 192.0.2.41 PostgreSQL, the shared store tier (every collector ships)
#
# The pool is closed (membership certificates), ENRP between the
# registrars is authenticated, cookies are Ed25519-signed. Every collector
# and the exporter know both registrars. While the exporter streams:
#   1. c1 is cut off from the exporter but not from the registrars
#      (failover to c2; c1 stays registered: it answers its keep-alives);
#   2. the cut heals (failback to c1);
#   3. the registrars are partitioned from each other (split brain), then
#      healed: their handlespaces must converge (same PEs on both);
#   4. c1 is SIGKILLed and restarted (failover and failback);
#   5. registrar r1 is SIGKILLed: the exporter keeps resolving through r2;
#   6. c1 is cut off from PostgreSQL while it stores: its shipping stalls,
#      then resumes after the heal.
# At the end, once the shipping has caught up, `collector audit` reads the
# three stores and the exporter's state file and prints its verdict; the
# audit of PostgreSQL (`--postgres`) must give the same one. The exit
# status is the verdict.
#
# Needs root (namespaces, iptables), openssl and softflowd; installs
# iproute2, iptables and softflowd with apt-get when missing.
#
# Usage: deploy/multi-host-pool.sh [RECORDS] [RATE]   (default 200000 at 20000/s)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-200000}"
rate="${2:-20000}"
[ "$(id -u)" = 0 ] || { echo "multi-host-pool: needs root (network namespaces)" >&2; exit 2; }
if ! command -v iptables >/dev/null || ! command -v ip >/dev/null || ! command -v softflowd >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables softflowd >/dev/null
fi
# shellcheck source=deploy/netns-hosts.sh
source deploy/netns-hosts.sh
# shellcheck source=deploy/netns-pool.sh
source deploy/netns-pool.sh
run="${POOLFLOW_RUN_DIR:-$(mktemp -d /tmp/poolflow-hosts.XXXXXX)}"
mkdir -p "$run"
cleanup() {
  for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  postgres_down
  netns_down
}
trap cleanup EXIT
say() { printf '\n== %s  %s\n' "$(date +%T.%3N)" "$*"; }

say "building (release)"
cargo build --release --locked -q -p registrar -p collector -p exporter
bin="$(pwd)/${CARGO_TARGET_DIR:-target}/release"

pool_setup

say "registrars r1 and r2 (ENRP peers), collectors c1 c2 c3"
start r1 registrar run --config "$run/r1.toml"
start r2 registrar run --config "$run/r2.toml"
for c in "${collectors[@]}"; do start_collector "$c"; done
wait_for 30 "three PEs in both handlespaces" converged 3
echo "r1: $(handlespace r1)"
echo "r2: $(handlespace r2)"

say "exporter e1: $records records at $rate/s"
start e1 exporter stream --config "$run/exporter.toml" --records "$records" --rate "$rate" \
  --exit-drain-timeout 60s
wait_for 30 "the stream starting" exporter_says "streaming to"

say "relay e2 and router rt: softflowd replays 20,000 one-packet flows to the relay"
start_relay
wait_for 30 "the relay listening" relay_listening
replay_router 20000
grep "^Flows exported" "$run/rt.out"

say "fault 1: c1 cut off from e1 (not from the registrars)"
before=$(failovers)
partition c1 e1
wait_for 30 "a failover away from c1" failovers_above "$before"
say "heal: c1 and e1 meet again"
before=$(failbacks)
heal c1 e1
wait_for 30 "the failback to c1" failbacks_above "$before"
registered r1 3 || { echo "multi-host-pool: a PE was removed by the cut" >&2; exit 1; }

say "fault 2: split brain (r1 and r2 cannot reach each other)"
partition r1 r2
sleep 2   # the fault itself lasts a while; nothing waits on it
say "heal: the registrars meet again"
heal r1 r2
wait_for 30 "both handlespaces converged" converged 3

say "fault 3: SIGKILL of c1 on its host, restarted"
before=$(failovers)
kill -9 "${pid[c1]}"
wait_for 30 "a failover after the kill" failovers_above "$before"
before=$(failbacks)
start_collector c1
wait_for 30 "the failback to the restarted c1" failbacks_above "$before"

say "fault 4: SIGKILL of registrar r1; the exporter resolves through r2"
kill -9 "${pid[r1]}"
unset 'pid[r1]'

say "fault 5: c1 cut off from PostgreSQL for 3 s (its shipping stalls, then resumes)"
partition c1 db
sleep 3   # the fault itself lasts a while; nothing waits on it
heal c1 db

if wait "${pid[e1]}"; then
  say "exporter finished: every record acknowledged by a cookie"
else
  say "exporter ended with an error (see $run/e1.log)"
fi
unset 'pid[e1]'
grep -hE "FAILOVER|FAILBACK|COOKIE REFUSED|acknowledged" "$run/e1.log" "$run/e1.out" | tail -12 || true

say "stopping the relay (SIGTERM: drain every router record taken in)"
kill -TERM "${pid[e2]}"
wait "${pid[e2]}" || echo "multi-host-pool: the relay did not drain (see $run/e2.log)" >&2
unset 'pid[e2]'
grep -hE "all acknowledged|NOT all" "$run/e2.out" | tail -1 || true

say "waiting for PostgreSQL to hold what the three stores hold"
wait_for 90 "the shipping catching up" postgres_caught_up ||
  echo "multi-host-pool: PostgreSQL behind the stores: $(tail -1 "$run/shipping.log")" >&2
tail -1 "$run/shipping.log"

say "stopping the collectors (SIGTERM: deregister, drain, commit)"
for c in "${collectors[@]}"; do kill -TERM "${pid[$c]}"; done
for c in "${collectors[@]}"; do wait "${pid[$c]}" || true; unset "pid[$c]"; done

say "audit across the three stores, against the exporter's own account"
set +e
audit_stores --exporter-state "$run/exporter.state"
verdict=$?
say "audit of the shared tier (PostgreSQL on db), against the same account"
audit_postgres --exporter-state "$run/exporter.state"
shared_verdict=$?
set -e
echo "(files and logs in $run)"
if [ "$shared_verdict" -ne "$verdict" ]; then
  echo "multi-host-pool: the stores' audit exited $verdict, PostgreSQL's $shared_verdict" >&2
  exit 1
fi
exit $verdict
