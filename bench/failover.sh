#!/usr/bin/env bash
# Failover benchmark (not a test, issue 18): one run of the main job
# (deploy/local-pool.sh) whose primary collector is SIGKILLed KILLS times
# under a billing stream at RATE records/s, and restarted after each
# failover. From the stores' handover records it prints, for every kill:
#   - SIGKILL of the primary -> the exporter's Cookie Echo at the backup
#     (records flow to the backup from that moment; replay starts there),
#   - restart of the primary -> the exporter's Cookie Echo back at the
#     primary (failback; includes the primary's start-up and registration),
# then the median and p95 of both and the audit's verdict.
# Settings: those of deploy/local-pool.sh (registrar keep-alive 200 ms +
# 300 ms timeout, exporter cookie timeout 1 s, failback check 200 ms, SCTP
# fast failure detection).
# Usage: bench/failover.sh [KILLS] [RATE]   (default 20 at 500000/s)
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-20}"
rate="${2:-500000}"
bin="${CARGO_TARGET_DIR:-target}/release"
# Enough records that the stream outlasts every kill, restart and failback
# (about 2 s each on this 2-core machine) with a margin.
records=$(( rate * (kills * 4 + 10) ))
dir=$(mktemp -d /tmp/poolflow-failover.XXXXXX)
echo "failover bench: $kills kills at $rate records/s ($records records), files in $dir"
POOLFLOW_KILLS="$kills" POOLFLOW_RUN_DIR="$dir" deploy/local-pool.sh "$records" "$rate" \
  >"$dir/main.log" 2>&1 && verdict=PASS || verdict=FAIL
"$bin/collector" audit --quiet --json --database "$dir/primary.sqlite" --database "$dir/backup.sqlite" \
  > "$dir/audit.json" || true
python3 - "$dir/audit.json" "$dir/kill-times" "$verdict" <<'PY'
import json, statistics, sys
report = json.load(open(sys.argv[1]))
times = [tuple(float(t) * 1000 for t in line.split()) for line in open(sys.argv[2]) if line.strip()]
hand = sorted((h["at_ms"] for ed in report["exporter_domains"] for h in ed["handovers"]))
first_after = lambda t: next((h - t for h in hand if h >= t), None)
fmt = lambda v: "-" if v is None else "%.0f" % v
print("%-5s %22s %26s" % ("kill", "kill->backup echo ms", "restart->failback echo ms"))
failovers, failbacks = [], []
for i, (killed, restarted) in enumerate(times, 1):
    fo, fb = first_after(killed), first_after(restarted)
    print("%-5d %22s %26s" % (i, fmt(fo), fmt(fb)))
    if fo is not None: failovers.append(fo)
    if fb is not None: failbacks.append(fb)
def summary(name, values):
    if not values:
        print(f"{name}: none measured"); return
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    print(f"{name}: median {statistics.median(values):.0f} ms, p95 {p95:.0f} ms, n={len(values)}")
summary("failover", failovers)
summary("failback", failbacks)
t = report["totals"]
print(f"audit: {sys.argv[3]} ({t['records_present']} present, {t['missing_records']} missing, "
      f"{t['conflicting_sequences']} conflicts, {t['benign_duplicate_sequences']} benign duplicates)")
PY
