#!/usr/bin/env bash
# Failover benchmark (not a test, issue 18): one run of the main job
# (deploy/local-pool.sh) whose primary collector is SIGKILLed KILLS times
# under a billing stream at RATE records/s, and restarted after each
# failover. From the exporter's log it prints, for every kill:
#   - SIGKILL of the primary -> the exporter streaming to the backup (its
#     Cookie Echo goes first, then the replay after the last cookie),
#   - restart of the primary -> the exporter streaming to the primary again
#     (failback; includes the primary's start-up and registration),
# then the median and p95 of both and the audit's verdict.
# Settings: those of deploy/local-pool.sh (registrar keep-alive 200 ms +
# 300 ms timeout, exporter cookie timeout 1 s, failback check 200 ms, SCTP
# fast failure detection).
# Failback is also timed from the primary's re-registration ("ASAP PE
# registered" in its log), the part the exporter controls.
# POOLFLOW_PATH_IMPAIR="LOSS DELAY JITTER" (e.g. "5 0ms 0ms") runs the pool
# in a network namespace of its own whose exporter<->collector path (the
# collectors' SCTP-over-UDP ports, both ways) goes through tests' netem
# (NFQUEUE; this kernel has no sch_netem): LOSS % dropped, the rest delayed
# DELAY ± JITTER. Needs root. The registrar's path stays clean.
# Usage: bench/failover.sh [KILLS] [RATE]   (default 20 at 500000/s)
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-20}"
rate="${2:-500000}"
bin="${CARGO_TARGET_DIR:-target}/release"
impair="${POOLFLOW_PATH_IMPAIR:-}"
# Enough records that the stream outlasts every kill, restart and failback
# (about 2 s each on this 2-core machine) with a margin.
records=$(( rate * (kills * 4 + 5) ))
dir=$(mktemp -d /tmp/poolflow-failover.XXXXXX)
echo "failover bench: $kills kills at $rate records/s ($records records), files in $dir"
in_pool_namespace=()
if [ -n "$impair" ]; then
  [ "$(id -u)" = 0 ] || { echo "POOLFLOW_PATH_IMPAIR needs root (a network namespace)" >&2; exit 2; }
  cargo build --release --locked -q -p registrar -p collector -p exporter -p poolflow-tests --bins
  read -r loss delay jitter <<<"$impair"
  ns="pf-failover-$$"
  base=$((20000 + RANDOM % 20000))
  ip netns add "$ns"
  # Under set -e a failing clean-up step (netem is already stopped after a
  # run) would turn a passing run's exit status into 1.
  trap 'kill -TERM "${netem:-}" 2>/dev/null || true; wait 2>/dev/null || true; ip netns del "$ns" 2>/dev/null || true' EXIT
  ip -n "$ns" link set lo up
  ip netns exec "$ns" "$bin/netem" --queue 7 --loss "$loss" --delay "$delay" --jitter "$jitter" \
    --seed "$base" >"$dir/netem.log" 2>&1 &
  netem=$!
  for _ in $(seq 50); do grep -q "netem: queue" "$dir/netem.log" && break; sleep 0.1; done
  # Every packet is seen once on INPUT of lo: both directions of the path.
  ip netns exec "$ns" iptables -A INPUT -i lo -p udp -m multiport --ports "$((base + 1)),$((base + 2))" \
    -j NFQUEUE --queue-num 7 --queue-bypass
  echo "path exporter<->collectors: $loss % loss, delay $delay ± $jitter (netem in $ns)"
  in_pool_namespace=(ip netns exec "$ns" env POOLFLOW_BASE_PORT="$base" POOLFLOW_BIN_DIR="$(pwd)/$bin")
fi
"${in_pool_namespace[@]}" env POOLFLOW_KILLS="$kills" POOLFLOW_RUN_DIR="$dir" deploy/local-pool.sh "$records" "$rate" \
  >"$dir/main.log" 2>&1 && verdict=PASS || verdict=FAIL
if [ -n "$impair" ]; then
  kill -TERM "$netem"; wait "$netem" || true
  echo "$(tail -1 "$dir/netem.log")"
fi
"$bin/collector" audit --quiet --json --database "$dir/primary.sqlite" --database "$dir/backup.sqlite" \
  > "$dir/audit.json" || true
python3 - "$dir/audit.json" "$dir/kill-times" "$verdict" "$dir/exporter.log" "$dir/primary.log" <<'PY'
import datetime, json, re, statistics, sys
report = json.load(open(sys.argv[1]))
times = [tuple(float(t) * 1000 for t in line.split()) for line in open(sys.argv[2]) if line.strip()]
# When the exporter started streaming to a PE (its Cookie Echo goes first),
# from its own log: "<UTC time> ... streaming pe_id=... reason=Failover".
ansi = re.compile(r"\x1b\[[0-9;]*m")
moves = {"Failover": [], "Failback": []}
for line in open(sys.argv[4], errors="replace"):
    line = ansi.sub("", line)
    m = re.match(r"(\S+)Z\s+INFO\s+exporter::stream: streaming pe_id=\S+ reason=(Failover|Failback)", line)
    if m:
        at = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc)
        moves[m.group(2)].append(at.timestamp() * 1000)
registered = []
for line in open(sys.argv[5], errors="replace"):
    m = re.match(r"(\S+)Z\s+INFO\s+\S+ ASAP PE registered", ansi.sub("", line))
    if m:
        at = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc)
        registered.append(at.timestamp() * 1000)
first_after = lambda kind, t: next((m - t for m in moves[kind] if m >= t), None)
fmt = lambda v: "-" if v is None else "%.0f" % v
print("%-5s %24s %28s %30s" % ("kill", "kill->stream at backup ms", "restart->stream at primary ms",
                               "registered->stream at primary ms"))
failovers, failbacks, from_registration = [], [], []
for i, (killed, restarted) in enumerate(times, 1):
    fo, fb = first_after("Failover", killed), first_after("Failback", restarted)
    reg = next((r for r in registered if r >= restarted), None)
    fr = first_after("Failback", reg) if reg is not None else None
    print("%-5d %24s %28s %30s" % (i, fmt(fo), fmt(fb), fmt(fr)))
    if fo is not None: failovers.append(fo)
    if fb is not None: failbacks.append(fb)
    if fr is not None: from_registration.append(fr)
def summary(name, values):
    if not values:
        print(f"{name}: none measured"); return
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    print(f"{name}: median {statistics.median(values):.0f} ms, p95 {p95:.0f} ms, n={len(values)}")
summary("failover", failovers)
summary("failback", failbacks)
summary("failback after re-registration", from_registration)
t = report["totals"]
print(f"audit: {sys.argv[3]} ({t['records_present']} present, {t['missing_records']} missing, "
      f"{t['conflicting_sequences']} conflicts, {t['benign_duplicate_sequences']} benign duplicates)")
PY
