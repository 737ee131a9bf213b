#!/bin/sh
# One command for the collector ingest benchmark (BENCHMARKS.md): builds the
# release binaries, then runs the side-by-side driver, which prints the table.
#
# Fairness: every collector asks for the same receive buffer through plain
# SO_RCVBUF (nfcapd -B, nfacctd_pipe_size, ours udp_receive_buffer_bytes with
# udp_receive_buffer_force = false), which the kernel caps at
# net.core.rmem_max; this script raises rmem_max to the buffer for the run
# and restores it on exit. Trials last at least 10 s.
#
# Installs nfdump (nfcapd), pmacct (nfacctd) and softflowd with apt-get when
# missing and running as root; a peer still missing is skipped, not fatal.
# Knobs (environment): POOLFLOW_BENCH_LOAD (generator, softflowd or
# generator,softflowd: softflowd is a third-party exporter replaying a pcap
# the driver writes), POOLFLOW_BENCH_SECS (>= 10), POOLFLOW_BENCH_RUNS,
# POOLFLOW_BENCH_STEPS, POOLFLOW_BENCH_RCVBUF, POOLFLOW_BENCH_PCAP_FLOWS,
# POOLFLOW_BENCH_ONLY; the driver prints its time estimate first (defaults:
# about 25 min with both peers, TCP/SCTP and the exporter).
set -eu
cd "$(dirname "$0")/.."

root=false
[ "$(id -u)" = 0 ] && root=true

missing=""
command -v nfcapd >/dev/null || missing="$missing nfdump"
command -v nfacctd >/dev/null || missing="$missing pmacct"
case ${POOLFLOW_BENCH_LOAD:-} in
  *softflowd*) command -v softflowd >/dev/null || missing="$missing softflowd" ;;
esac
if [ -n "$missing" ] && $root && command -v apt-get >/dev/null; then
  echo "installing$missing" >&2
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

buffer=${POOLFLOW_BENCH_RCVBUF:-16777216}
export POOLFLOW_BENCH_RCVBUF=$buffer
old_max=$(cat /proc/sys/net/core/rmem_max)
if [ "$old_max" -lt "$buffer" ]; then
  if $root; then
    trap 'sysctl -qw net.core.rmem_max="$old_max"' EXIT
    trap 'exit 130' INT TERM
    sysctl -qw net.core.rmem_max="$buffer"
    echo "net.core.rmem_max raised from $old_max to $buffer for the run" >&2
  else
    echo "warning: net.core.rmem_max $old_max < $buffer and not root: every collector gets $old_max" >&2
  fi
fi

cargo build --release -p collector
cargo bench -p poolflow-tests --bench compare "$@"
