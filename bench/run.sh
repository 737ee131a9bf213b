#!/bin/sh
# One command for the collector benchmarks (BENCHMARKS.md): builds the
# release binaries, then runs the side-by-side driver, which prints the table.
# Needs nfdump and pmacct for the peers (apt-get install -y nfdump pmacct);
# a missing peer is skipped, not fatal. Takes about 5 minutes.
set -eu
cd "$(dirname "$0")/.."
cargo build --release -p collector
exec cargo bench -p poolflow-tests --bench compare "$@"
