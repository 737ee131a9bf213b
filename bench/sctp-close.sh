#!/bin/bash
# Issue 20 reproduction (docs/sctp-close.md): N `exporter generate --transport
# sctp` processes into one `collector run`, all closing at once; prints the
# domains stored short and, with CAPTURE=1 (needs dumpcap and tshark), what
# the collector acknowledged per association: every DATA chunk SACKed and
# the SHUTDOWN sequence completed, even where the store is short.
#   bench/sctp-close.sh [N generators, default 20] [records each, default 200000]
# BIN=dir picks the binaries (default: target/release, built here).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
RECORDS=${2:-200000}
if [ -z "${BIN:-}" ]; then
  cargo build --release -p collector -p exporter
  BIN="${CARGO_TARGET_DIR:-target}/release"
fi
DIR=$(mktemp -d /tmp/sctp-close.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
METRICS=127.0.0.1:$((PORT + 1))
cleanup() { kill $(jobs -p) 2>/dev/null || true; }
trap cleanup EXIT

if [ "${CAPTURE:-0}" = 1 ]; then
  # Headers only: enough for INIT's initial TSN and SACK's cumulative TSN ack.
  dumpcap -q -i lo -s 128 -f "udp port $PORT" -w "$DIR/cap.pcapng" 2>"$DIR/dumpcap.log" &
  CAPTURE_PID=$!
  sleep 2
fi
"$BIN/collector" run --database "$DIR/flows.sqlite" --no-udp --no-tcp \
  --sctp "127.0.0.1:$PORT" --metrics "$METRICS" 2>"$DIR/collector.log" &
COLLECTOR=$!
for _ in $(seq 100); do curl -sf "$METRICS/metrics" >/dev/null && break; sleep 0.1; done

pids=()
for i in $(seq 1 "$N"); do
  "$BIN/exporter" generate --to "127.0.0.1:$PORT" --transport sctp \
    --records "$RECORDS" --domain "$i" >"$DIR/generate-$i.log" 2>&1 &
  pids+=($!)
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
echo "generators that exited non-zero: $failed of $N"
for _ in $(seq 600); do
  active=$(curl -s "$METRICS/metrics" | awk '/^poolflow_collector_sessions_active/ {s += $2} END {print s + 0}')
  [ "$active" = 0 ] && break
  sleep 0.1
done
curl -s "$METRICS/metrics" | grep '^poolflow_collector_associations_ended_total' || true
kill -TERM "$COLLECTOR"
wait "$COLLECTOR" || true

echo "stored: $(sqlite3 "$DIR/flows.sqlite" 'SELECT COUNT(DISTINCT domain) || " domains, " || SUM(record_count) || " records" FROM record_blocks') (sent: $N x $RECORDS)"
echo "domains short (domain|records|messages):"
sqlite3 "$DIR/flows.sqlite" "SELECT domain, SUM(record_count), COUNT(DISTINCT message_sequence) FROM record_blocks GROUP BY domain HAVING SUM(record_count) != $RECORDS"

if [ "${CAPTURE:-0}" = 1 ]; then
  sleep 1
  kill -INT "$CAPTURE_PID"
  wait "$CAPTURE_PID" || true
  echo "per association (exporter port): DATA chunks the collector SACKed (one IPFIX message each), chunk types seen"
  tshark -r "$DIR/cap.pcapng" -d "udp.port==$PORT,sctp" -T fields -e udp.srcport -e udp.dstport \
    -e sctp.chunk_type -e sctp.init_initial_tsn -e sctp.sack_cumulative_tsn_ack 2>/dev/null |
    awk -v port="$PORT" -F'\t' '
      { peer = ($2 == port) ? $1 : $2
        n = split($3, types, ","); for (i = 1; i <= n; i++) seen[peer] = seen[peer] " " types[i]
        if ($2 == port && $4 != "") { split($4, t, ","); initial[peer] = t[1] }
        if ($1 == port && $5 != "") { n = split($5, c, ","); for (i = 1; i <= n; i++) cum[peer] = c[i] } }
      END { for (p in initial) {
              acked = (cum[p] - initial[p] + 1 + 4294967296) % 4294967296
              has = ""; if (seen[p] ~ / 7( |$)/) has = has " SHUTDOWN"; if (seen[p] ~ / 8( |$)/) has = has " SHUTDOWN-ACK"; if (seen[p] ~ / 14( |$)/) has = has " SHUTDOWN-COMPLETE"
              printf "%s: %d DATA chunks SACKed;%s\n", p, acked, has } }' | sort
fi
echo "logs and store: $DIR"
