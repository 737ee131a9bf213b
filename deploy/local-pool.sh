#!/usr/bin/env bash
# The main job: a local poolflow setup on loopback, end to end.
#
# Today (foundation): builds, starts a collector (UDP + TCP), streams
# synthetic IPFIX to it with `exporter generate` over TCP and UDP, stops the
# collector gracefully (SIGTERM: drain and commit), and shows what was stored
# with `collector query`, including the sequence accounting.
# The registrar, the second collector, SIGKILL failover, failback and the
# audit join this script as their issues land (RSerPool core, exporter).
#
# Usage: deploy/local-pool.sh [RECORDS]     (default 200000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-200000}"
run_dir="${POOLFLOW_RUN_DIR:-$(mktemp -d /tmp/poolflow.XXXXXX)}"
mkdir -p "$run_dir"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

echo "== building (release)"
cargo build --release --locked -q -p collector -p exporter
bin=target/release
[ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/release"

port_udp=$((20000 + RANDOM % 20000))
port_tcp=$((port_udp + 1))
db="$run_dir/collector.sqlite"
echo "== starting collector: UDP 127.0.0.1:$port_udp, TCP 127.0.0.1:$port_tcp, store $db"
"$bin/collector" run --config deploy/collector.toml --database "$db" \
  --udp "127.0.0.1:$port_udp" --tcp "127.0.0.1:$port_tcp" \
  >"$run_dir/collector.out" 2>"$run_dir/collector.log" &
collector_pid=$!
pids+=("$collector_pid")
for _ in $(seq 100); do
  grep -q "listening tcp" "$run_dir/collector.out" 2>/dev/null && break
  sleep 0.1
done

echo "== exporter: $records records over TCP (domain 1)"
"$bin/exporter" generate --to "127.0.0.1:$port_tcp" --transport tcp --records "$records" --domain 1
echo "== exporter: $records records over UDP at 100000/s (domain 2)"
"$bin/exporter" generate --to "127.0.0.1:$port_udp" --transport udp --records "$records" \
  --rate 100000 --domain 2

echo "== stopping the collector with SIGTERM (drain, commit)"
kill -TERM "$collector_pid"
wait "$collector_pid"
pids=()

echo "== what the store holds"
"$bin/collector" query --database "$db" --domain 2 --limit 2
echo "== sequence accounting per exporter/domain"
"$bin/collector" stats --database "$db"
stored=$("$bin/collector" stats --database "$db" | awk 'NR > 1 { n += $4 } END { print n + 0 }')
echo "records stored: $stored (sent: $((2 * records)))"
if [ "$stored" -ne $((2 * records)) ]; then
  echo "VERDICT: $(( 2 * records - stored )) records missing" >&2
  exit 1
fi
echo "VERDICT: all $stored records stored"
