#!/usr/bin/env bash
# Soak (issue 18): the local pool (deploy/local-pool.sh) with every
# collector alive, under a billing stream at RATE records/s for SECONDS,
# while BURN busy loops (default 2: both cores of this machine) compete for
# the CPU as a parallel build would. Any failover is a false one: the
# collectors never died. Prints the false-failover count and the audit's
# verdict, and exits non-zero unless both are clean.
#   bench/soak.sh [SECONDS] [RATE]          (default 600 s at 500000/s)
#   POOLFLOW_SOAK_BURN=0 bench/soak.sh ...  (no competing load)
#   POOLFLOW_BIN_DIR=target/debug ...       (binaries built elsewhere)
# CI runs a 60 s version (tests/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
rate="${2:-500000}"
burn="${POOLFLOW_SOAK_BURN:-2}"
records=$(( seconds * rate ))
dir=$(mktemp -d /tmp/poolflow-soak.XXXXXX)
burners=()
stop_burners() { for p in "${burners[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap stop_burners EXIT
for _ in $(seq "$burn"); do
  ( while :; do :; done ) &
  burners+=($!)
done
echo "soak: $seconds s at $rate records/s ($records records), $burn busy loops beside it, files in $dir"
started=$SECONDS
POOLFLOW_KILLS=0 POOLFLOW_RUN_DIR="$dir" deploy/local-pool.sh "$records" "$rate" \
  >"$dir/main.log" 2>&1 && verdict=PASS || verdict=FAIL
stop_burners
false_failovers=$(grep -c "FAILOVER" "$dir/exporter.log" || true)
echo "soak: ran $(( SECONDS - started )) s; false failovers: $false_failovers; audit: $verdict"
grep -h "VERDICT" "$dir/main.log" || true
[ "$verdict" = PASS ] && [ "$false_failovers" -eq 0 ] && rm -rf "$dir"
