#!/usr/bin/env bash
# Failover benchmark (not a test): runs the main job (deploy/local-pool.sh)
# RUNS times and prints, from the stores' handover records:
#   - SIGKILL of the primary -> the exporter's Cookie Echo at the backup
#     (records flow to the backup from that moment; replay starts there),
#   - restart of the primary -> the exporter's Cookie Echo back at the
#     primary (failback; includes the primary's start-up and registration).
# Settings: the registrar's keep-alive 200 ms + 300 ms timeout, exporter
# cookie timeout 1 s, failback check 200 ms, SCTP fast failure detection
# (see deploy/local-pool.sh).
# Usage: bench/failover.sh [RUNS]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
bin="${CARGO_TARGET_DIR:-target}/release"
printf '%-4s %22s %26s %8s\n' run "kill->backup echo ms" "restart->failback echo ms" audit
for i in $(seq "$runs"); do
  dir=$(mktemp -d /tmp/poolflow-failover.XXXXXX)
  POOLFLOW_RUN_DIR="$dir" deploy/local-pool.sh 60000 20000 >"$dir/main.log" 2>&1 && verdict=PASS || verdict=FAIL
  read -r killed restarted < "$dir/kill-times"
  "$bin/collector" audit --quiet --json --database "$dir/primary.sqlite" --database "$dir/backup.sqlite" \
    > "$dir/audit.json" || true
  python3 - "$dir/audit.json" "$killed" "$restarted" "$i" "$verdict" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
killed, restarted = float(sys.argv[2]) * 1000, float(sys.argv[3]) * 1000
hand = sorted((h for ed in report["exporter_domains"] for h in ed["handovers"]), key=lambda h: h["at_ms"])
failover = next((h["at_ms"] - killed for h in hand if h["at_ms"] >= killed), None)
failback = next((h["at_ms"] - restarted for h in hand if h["at_ms"] >= restarted), None)
fmt = lambda v: "-" if v is None else "%.0f" % v
print("%-4s %22s %26s %8s" % (sys.argv[4], fmt(failover), fmt(failback), sys.argv[5]))
PY
done
