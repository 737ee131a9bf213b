#!/usr/bin/env bash
# A seeded random schedule of faults between hosts (a Jepsen-style
# nemesis) over a billing stream, with the audit as the oracle.
#
# The pool of deploy/multi-host-pool.sh (deploy/netns-pool.sh: two ENRP
# registrars, three collectors, one exporter, each on its own namespace
# host) runs an endless `exporter stream` with durable intake. One fault at
# a time, each held for a random while and then healed:
#   cut      a collector from the exporter (not from the registrars)
#   isolate  a collector from both registrars (not from the exporter)
#   split    the registrars from each other (split brain)
#   loss     5 % of the packets arriving at one host dropped
#   impair   one host's link degraded both ways as netem would: 5 % loss,
#            50 ms ± 20 ms delay (so reordering), 1 % of its packets doubled
#            (tests/src/bin/netem.rs over NFQUEUE, and TEE)
#   linkdown one host's interface down, then up
#   kill     SIGKILL of a collector, restarted
#   stop     SIGSTOP of a collector, then SIGCONT
#   regkill  SIGKILL of a registrar, restarted
#   expkill  SIGKILL of the exporter, restarted (durable intake: nothing lost)
#   relaykill SIGKILL of the relay, restarted
#   dbcut    a collector cut off from PostgreSQL (host db), then healed: its
#            shipping to the shared tier stalls and resumes, exactly once
#   clockjump a collector's wall clock steps 10 min or 1 h forward or back,
#            then steps back to the true time (libfaketime, see
#            deploy/netns-pool.sh start_collector)
# Then everything heals, the exporter is stopped with SIGTERM (it must
# drain: every record acknowledged by a cookie), and the run must show:
#   - both registrars hold the same three PEs (the handlespaces converged);
#   - `collector audit` over the three stores and the exporter's state file
#     passes, with no missing record and nothing declared lost;
#   - PostgreSQL, once the collectors' shipping has caught up, holds the
#     same records and its audit (`--postgres`) gives the same verdict;
#   - no collector was evicted on reports alone.
# It prints, per fault, the failovers it caused; a failover during `loss`
# or `impair` is a false one (every collector was alive) and fails the seed
# (issue 16: no false failover at 5 % loss).
#
# Each run prints the one-line command that reproduces it. Exit 0 when the
# oracle holds. Needs root (namespaces, iptables) and openssl.
#
#   tests/netns/nemesis.sh --seed 17 [--faults 6]
#   tests/netns/nemesis.sh --seeds 1-10        # a range, one pool per seed
set -euo pipefail
cd "$(dirname "$0")/../.."

seeds=""
faults=5
rate=20000
router_flows=20000
fault_kinds="cut isolate split loss impair linkdown kill stop regkill expkill relaykill dbcut clockjump"
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seeds="$2"; shift 2 ;;
    --seeds) seeds=$(seq "${2%-*}" "${2#*-}" | tr '\n' ' '); shift 2 ;;
    --faults) faults="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --kinds) fault_kinds="$2"; shift 2 ;;
    *) echo "usage: $0 --seed N | --seeds A-B [--faults K] [--rate R] [--kinds \"cut split ...\"]" >&2; exit 2 ;;
  esac
done
[ -n "$seeds" ] || seeds=$((RANDOM * 32768 + RANDOM))
[ "$(id -u)" = 0 ] || { echo "nemesis: needs root (network namespaces)" >&2; exit 2; }
faketime_lib=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
if ! command -v iptables >/dev/null || ! command -v ip >/dev/null || ! command -v openssl >/dev/null ||
  [ ! -f "$faketime_lib" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables openssl faketime >/dev/null
fi

say() { printf '%s  %s\n' "$(date +%T.%3N)" "$*"; }
if [ -z "${POOLFLOW_BIN_DIR:-}" ]; then
  cargo build --release --locked -q -p registrar -p collector -p exporter -p poolflow-tests --bins
fi
bin="${POOLFLOW_BIN_DIR:-$(pwd)/${CARGO_TARGET_DIR:-target}/release}"
if [ ! -x "$bin/netem" ]; then
  echo "nemesis: $bin/netem missing (cargo build -p poolflow-tests --bin netem)" >&2
  exit 2
fi

# One seed: a fresh pool, the schedule, the oracle. Runs in a subshell so
# each seed has its own namespaces and traps.
one_seed() ( # SEED
  seed=$1
  RANDOM=$seed
  run=$(mktemp -d "/tmp/poolflow-nemesis-$seed.XXXXXX")
  # shellcheck source=deploy/netns-hosts.sh
  source deploy/netns-hosts.sh
  # shellcheck source=deploy/netns-pool.sh
  source deploy/netns-pool.sh
  NETNS_NETEM="$bin/netem" NETNS_NETEM_LOG="$run/netem.log" NETNS_NETEM_SEED=$seed
  cleanup() {
    for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    postgres_down
    netns_down
  }
  trap cleanup EXIT
  echo "reproduce: tests/netns/nemesis.sh --seed $seed --faults $faults --rate $rate --kinds \"$fault_kinds\""
  fail() { echo "nemesis seed $seed: FAIL: $*  (logs in $run)" >&2; exit 1; }
  # Collectors with a wall clock of their own, for clockjump (the fault
  # must be real: without libfaketime the seed fails rather than pass).
  if [[ " $fault_kinds " == *" clockjump "* ]]; then
    [ -f "$faketime_lib" ] || fail "clockjump needs libfaketime ($faketime_lib)"
    NETNS_FAKETIME=$faketime_lib
  fi

  pool_setup >/dev/null
  exporter_config "durable = true
journal_dir = \"$run/journal\""
  start r1 registrar run --config "$run/r1.toml"
  start r2 registrar run --config "$run/r2.toml"
  for c in "${collectors[@]}"; do start_collector "$c"; done
  wait_for 30 "three PEs in both handlespaces" converged 3 || fail "pool did not form"
  start_exporter() {
    start e1 exporter stream --config "$run/exporter.toml" --records 1000000000 \
      --rate "$rate" --exit-drain-timeout 60s
  }
  start_exporter
  wait_for 30 "the stream starting" exporter_says "streaming to" || fail "no stream"
  # The relay on e2 (durable intake) takes a router's export: softflowd on
  # host rt replays a pcap of one-packet flows, one IPFIX record each.
  relay_config "durable = true
journal_dir = \"$run/relay-journal\""
  start_relay
  wait_for 30 "the relay listening" relay_listening || fail "relay did not start"
  replay_router "$router_flows" || fail "softflowd failed: $(tail -3 "$run/rt.out")"
  router_exported=$(sed -n 's/^Flows exported: \([0-9]*\) .*/\1/p' "$run/rt.out")
  [ "${router_exported:-0}" -eq "$router_flows" ] || fail "softflowd exported ${router_exported:-none} of $router_flows flows"
  # The faults start once the relay has taken in (read and journaled) every
  # router record: a router over UDP never resends, so a relay killed with
  # datagrams still unread in its socket buffer loses them, whatever the
  # relay does (docs/multi-host.md). What the relay has taken in, no fault
  # may lose.
  wait_for 60 "the relay taking in all $router_flows router records" relay_took_in "$router_flows" \
    || fail "the relay took in $(relay_taken_in) of $router_flows router records"

  # Picks into a variable, in this shell: a command substitution would run in
  # a subshell, which bash reseeds, and the schedule would not follow the seed.
  pick() { local -n into=$1; shift; local a=("$@"); into=${a[RANDOM % ${#a[@]}]}; }
  hold() { # a fault lasts 0.5-3.0 s: the duration is the fault, not a wait for an event
    sleep "$(( RANDOM % 6 / 2 )).$(( RANDOM % 10 ))"
    sleep 0.5
  }
  read -r -a kinds <<<"$fault_kinds"
  false_failovers=0
  for i in $(seq "$faults"); do
    pick kind "${kinds[@]}"
    before=$(failovers)
    case "$kind" in
      cut) pick c "${collectors[@]}"; say "fault $i: cut $c from e1"
        partition "$c" e1; hold; heal "$c" e1 ;;
      isolate) pick c "${collectors[@]}"; say "fault $i: isolate $c from the registrars"
        partition "$c" r1; partition "$c" r2; hold; heal "$c" r1; heal "$c" r2 ;;
      split) say "fault $i: split brain r1 | r2"
        partition r1 r2; hold; heal r1 r2 ;;
      loss) pick h r1 r2 c1 c2 c3 e1; say "fault $i: 5 % loss into $h"
        loss "$h" 5; hold; hold; heal_all ;;
      impair) pick h r1 r2 c1 c2 c3 e1
        say "fault $i: $h's link: 5 % loss, 50 ms ± 20 ms delay, 1 % duplicates"
        impair "$h" 5 50ms 20ms 1; hold; hold; heal_all
        impaired=$(tail -1 "$NETNS_NETEM_LOG")
        say "  -> $impaired"
        # Proof the fault was real: netem saw the traffic and dropped some.
        [[ "$impaired" =~ queued\ ([0-9]+)\ dropped\ ([1-9][0-9]*) ]] ||
          fail "netem did not impair $h: $impaired" ;;
      linkdown) pick h r1 r2 c1 c2 c3; say "fault $i: $h link down"
        link_down "$h"; hold; link_up "$h" ;;
      kill) pick c "${collectors[@]}"; say "fault $i: SIGKILL $c"
        kill -9 "${pid[$c]}"; wait "${pid[$c]}" 2>/dev/null || true; hold; start_collector "$c" ;;
      stop) pick c "${collectors[@]}"; say "fault $i: SIGSTOP $c"
        kill -STOP "${pid[$c]}"; hold; kill -CONT "${pid[$c]}" ;;
      regkill) pick r r1 r2; say "fault $i: SIGKILL registrar $r"
        kill -9 "${pid[$r]}"; wait "${pid[$r]}" 2>/dev/null || true; hold
        start "$r" registrar run --config "$run/$r.toml" ;;
      expkill) say "fault $i: SIGKILL the exporter"
        kill -9 "${pid[e1]}"; wait "${pid[e1]}" 2>/dev/null || true; hold; start_exporter ;;
      dbcut) pick c "${collectors[@]}"; say "fault $i: cut $c from PostgreSQL"
        partition "$c" db; hold; heal "$c" db ;;
      clockjump) pick c "${collectors[@]}"; pick step -3600 -600 600 3600
        say "fault $i: $c's wall clock steps ${step} s"
        clock_jump "$c" "$step"; hold; hold; clock_jump "$c" 0 ;;
      relaykill) say "fault $i: SIGKILL the relay"
        kill -9 "${pid[e2]}"; wait "${pid[e2]}" 2>/dev/null || true; hold; start_relay ;;
    esac
    caused=$(( $(failovers) - before ))
    case "$kind" in loss | impair) false_failovers=$((false_failovers + caused)) ;; esac
    say "  -> failovers during the fault: $caused"
  done

  [ "$false_failovers" -eq 0 ] ||
    fail "$false_failovers false failovers under loss (every collector was alive)"
  say "healing everything; waiting for both registrars to hold the three PEs"
  heal_all
  healed_ms=$(date +%s%3N)
  # Bounded at 120 s, and printed: 0-2 s since stale associations to a
  # restarted registrar end at its out-of-the-blue ABORT (RFC 9260 8.4);
  # ~45 s before.
  wait_for 120 "convergence of the handlespaces" converged 3 ||
    fail "handlespaces differ: r1 [$(handlespace r1)] r2 [$(handlespace r2)]"
  converged_after=$(( $(date +%s%3N) - healed_ms ))
  say "  -> handlespaces converged ${converged_after} ms after healing"
  say "stopping the exporter (SIGTERM: drain every record sent)"
  kill -TERM "${pid[e1]}"
  wait "${pid[e1]}" || fail "the exporter did not drain: $(tail -3 "$run/e1.out" "$run/e1.log")"
  unset 'pid[e1]'
  grep -q "all acknowledged" "$run/e1.out" || fail "the exporter did not report all acknowledged"
  say "stopping the relay (SIGTERM: drain every router record taken in)"
  kill -TERM "${pid[e2]}"
  wait "${pid[e2]}" || fail "the relay did not drain: $(tail -3 "$run/e2.out" "$run/e2.log")"
  unset 'pid[e2]'
  say "waiting for PostgreSQL to hold what the stores hold (shipping behind the commits)"
  wait_for 90 "the shipping catching up" postgres_caught_up ||
    fail "PostgreSQL behind the stores: $(tail -1 "$run/shipping.log")"
  say "  -> $(tail -1 "$run/shipping.log" | sed 's/^ *//')"
  for c in "${collectors[@]}"; do kill -TERM "${pid[$c]}"; done
  for c in "${collectors[@]}"; do wait "${pid[$c]}" || fail "$c did not stop cleanly"; unset "pid[$c]"; done
  evicted=0
  for r in r1 r2; do
    n=$(on "$r" "$bin/registrar" dump --json --status 127.0.0.1:3864 | python3 -c 'import json,sys
print(json.load(sys.stdin)["counters"]["unreachable_removals"])')
    evicted=$((evicted + n))
  done
  [ "$evicted" -eq 0 ] || fail "$evicted collectors evicted on unreachable reports"
  audit_stores --json --exporter-state "$run/exporter.state" >"$run/audit.json" ||
    fail "audit: $(head -c 2000 "$run/audit.json")"
  # The shared tier must give the same verdict on the same records.
  audit_postgres --json --exporter-state "$run/exporter.state" >"$run/audit-pg.json" ||
    fail "audit of PostgreSQL: $(head -c 2000 "$run/audit-pg.json")"
  python3 - "$run/audit.json" "$seed" "$false_failovers" "$router_flows" "$converged_after" "$run/audit-pg.json" <<'EOF' || fail "audit oracle"
import json, sys
report = json.load(open(sys.argv[1]))
t = report["totals"]
shared = json.load(open(sys.argv[6]))
assert shared["verdict"] == "pass", ("PostgreSQL", shared["verdict"])
for key in ("records_present", "missing_records", "conflicting_sequences", "declared_lost_records"):
    assert shared["totals"][key] == t[key], (key, "PostgreSQL", shared["totals"][key], "stores", t[key])
stream = [x for x in report["exporter_domains"] if x["billing_exporter"] == 7]
relay = [x for x in report["exporter_domains"] if x["billing_exporter"] == 9]
assert report["verdict"] == "pass", report["verdict"]
assert t["missing_records"] == 0, t
assert t["conflicting_sequences"] == 0, t
assert t["declared_lost_records"] == 0, t
assert len(stream) == 1, stream
relayed = sum(d["records_present"] for d in relay)
# Every flow the router exported is stored (the relay may add the router's
# options records, e.g. softflowd's, to its billing stream).
assert relayed >= int(sys.argv[4]), f"relay stored {relayed} of {sys.argv[4]} router flows"
print(f"nemesis seed {sys.argv[2]}: PASS stream {stream[0]['records_present']} and relay {relayed} "
      f"records (PostgreSQL the same), missing 0, declared lost 0, "
      f"benign duplicates {t['benign_duplicate_sequences']}, "
      f"false failovers under loss {sys.argv[3]}, converged after {sys.argv[5]} ms")
EOF
)

status=0
for seed in $seeds; do
  one_seed "$seed" || status=1
done
exit $status
