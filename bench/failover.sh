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
# Usage: bench/failover.sh [KILLS] [RATE]   (default 20 at 500000/s)
set -euo pipefail
cd "$(dirname "$0")/.."
kills="${1:-20}"
rate="${2:-500000}"
bin="${CARGO_TARGET_DIR:-target}/release"
# Enough records that the stream outlasts every kill, restart and failback
# (about 2 s each on this 2-core machine) with a margin.
records=$(( rate * (kills * 4 + 5) ))
dir=$(mktemp -d /tmp/poolflow-failover.XXXXXX)
echo "failover bench: $kills kills at $rate records/s ($records records), files in $dir"
POOLFLOW_KILLS="$kills" POOLFLOW_RUN_DIR="$dir" deploy/local-pool.sh "$records" "$rate" \
  >"$dir/main.log" 2>&1 && verdict=PASS || verdict=FAIL
"$bin/collector" audit --quiet --json --database "$dir/primary.sqlite" --database "$dir/backup.sqlite" \
  > "$dir/audit.json" || true
python3 - "$dir/audit.json" "$dir/kill-times" "$verdict" "$dir/exporter.log" <<'PY'
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
first_after = lambda kind, t: next((m - t for m in moves[kind] if m >= t), None)
fmt = lambda v: "-" if v is None else "%.0f" % v
print("%-5s %24s %28s" % ("kill", "kill->stream at backup ms", "restart->stream at primary ms"))
failovers, failbacks = [], []
for i, (killed, restarted) in enumerate(times, 1):
    fo, fb = first_after("Failover", killed), first_after("Failback", restarted)
    print("%-5d %24s %28s" % (i, fmt(fo), fmt(fb)))
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
