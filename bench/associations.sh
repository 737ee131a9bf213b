#!/bin/sh
# Many concurrent IPFIX-over-SCTP associations into one collector
# (BENCHMARKS.md, "Many associations"): stored records/s and the collector's
# memory for 1, 10, 100 and 1,000 associations, or the counts given, e.g.
#   bench/associations.sh 1 10 100
# POOLFLOW_BENCH_RECORDS sets the records per run (default 1,000,000).
set -eu
cd "$(dirname "$0")/.."
# 1,000 associations are 1,000 UDP sockets on the sending side.
ulimit -n 8192 2>/dev/null || true
cargo build --release -p collector
exec cargo bench -p poolflow-tests --bench associations -- "$@"
