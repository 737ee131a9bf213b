#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, seeded from the checked-in
# corpus (fuzz/corpus/<target>/); exits non-zero if any target crashes,
# hangs or leaks. Works on the stable toolchain: cargo-fuzz needs -Z flags
# (sanitizer, coverage instrumentation), which RUSTC_BOOTSTRAP=1 unlocks.
#
#   fuzz/run.sh                 # every target, FUZZ_SECONDS (15) each
#   fuzz/run.sh asap enrp       # only these
#   FUZZ_SECONDS=300 fuzz/run.sh ipfix_session
#
# Crashing inputs land in fuzz/artifacts/<target>/; reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/crash-…
# New interesting inputs go to a scratch corpus, not into the checked-in
# seeds (set FUZZ_CORPUS_OUT to keep them).
set -euo pipefail

cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-15}
# address (cargo-fuzz's default) also catches memory errors in C and unsafe
# code (the bundled SQLite); none builds and runs faster.
sanitizer=${FUZZ_SANITIZER:-address}
# The fuzz crate has its own lock file and build directory; keep it apart
# from the workspace's so the instrumented build does not evict it.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# One build for all targets (release, debug assertions and overflow checks
# on, AddressSanitizer).
cargo fuzz build --debug-assertions --sanitizer="$sanitizer"

if [ -n "${FUZZ_CORPUS_OUT:-}" ]; then
    scratch=$FUZZ_CORPUS_OUT
else
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
fi
failed=()
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target" "corpus/$target"
    echo "== $target: ${seconds}s"
    # -timeout: one input taking longer is a hang (a bug). -rss_limit_mb:
    # unbounded allocation from hostile input is a bug too.
    if ! cargo fuzz run --debug-assertions --sanitizer="$sanitizer" "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        2>"$scratch/$target.log"; then
        # The cause first (a panic message or sanitizer report), then how
        # libFuzzer saw it and where the input is.
        grep -m1 -A4 -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)' \
            "$scratch/$target.log" >&2 || true
        grep -A12 -E '^SUMMARY|^Failing input' "$scratch/$target.log" >&2 || true
        failed+=("$target")
    else
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' \
            "$scratch/$target.log" || true
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz/run.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz/run.sh: all ${#targets[@]} targets ran ${seconds}s without a crash"
