#!/usr/bin/env bash
# Runs every test of the workspace. The interop tests drive programs nobody
# here wrote (tshark, softflowd, usrsctp, openssl's s_client, PostgreSQL);
# this installs them first when they are missing and we may (root with
# apt-get), so a newcomer needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(tshark softflowd libusrsctp-dev openssl postgresql)
missing=()
command -v tshark >/dev/null || missing+=(tshark)
command -v softflowd >/dev/null || missing+=(softflowd)
command -v openssl >/dev/null || missing+=(openssl)
[ -e /usr/include/usrsctp.h ] || missing+=(libusrsctp-dev)
# The shared store tier's tests (tests/tests/postgres_tier.rs) start a
# throw-away server of their own with tests/postgres/start.sh.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing test tools: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  else
    echo "note: ${missing[*]} missing and not installable here; their interop tests will say SKIPPED" >&2
  fi
fi

cargo test --workspace --locked "$@"

# Native SCTP against a real Linux kernel: this host's kernel (like most
# containers') has none, so transport/tests/kernel-vm/run.sh boots Debian's
# kernel in a throw-away QEMU VM and runs transport/tests/kernel_sctp.rs
# there, including Linux's SCTP over UDP against our user-space stack. The
# same VM then runs the interop test with Debian's RSPLIB packages
# (transport/tests/kernel-vm/rsplib.sh, issue 13): RSPLIB's PE, PU and
# hsdump against our registrar, our collectors and exporter against
# rspregistrar. In CI neither may be skipped.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || command -v qemu-system-x86_64 >/dev/null; then
  echo "== kernel SCTP in a VM (transport/tests/kernel-vm/run.sh)"
  bash transport/tests/kernel-vm/run.sh
  echo "== RSPLIB interop in the kernel-SCTP VM (transport/tests/kernel-vm/rsplib.sh)"
  bash transport/tests/kernel-vm/rsplib.sh
elif [ -n "${CI:-}" ]; then
  echo "FAIL: kernel SCTP VM and RSPLIB interop tests need qemu-system-x86 (or root with apt-get); CI must run them" >&2
  exit 1
else
  echo "SKIPPED: kernel SCTP VM and RSPLIB interop tests: need qemu-system-x86 (or root with apt-get to install it)" >&2
fi

# A pool across hosts made of network namespaces under a seeded random
# schedule of faults (partitions, split brain, loss, links down, SIGKILL and
# SIGSTOP), with the audit as the oracle (tests/netns/nemesis.sh,
# docs/multi-host.md). Needs root for the namespaces; the long run is
# `tests/netns/nemesis.sh --seeds 1-200`.
if [ "$(id -u)" = 0 ]; then
  echo "== multi-host nemesis, seeds 1-10 (tests/netns/nemesis.sh)"
  cargo build --locked -q -p registrar -p collector -p exporter -p poolflow-tests --bins
  POOLFLOW_BIN_DIR="$(pwd)/${CARGO_TARGET_DIR:-target}/debug" \
    bash tests/netns/nemesis.sh --seeds 1-10 --faults 3
else
  echo "SKIPPED: multi-host nemesis: needs root (network namespaces)" >&2
fi

# The soak (issue 18): a local pool with every collector alive under a
# billing stream for 60 s beside two busy loops; any failover is a false one
# and fails it, as does the audit (bench/soak.sh; the long run is
# `bench/soak.sh 600 500000` with release binaries).
echo "== soak, 60 s beside two busy loops (bench/soak.sh)"
cargo build --locked -q -p registrar -p collector -p exporter
POOLFLOW_BIN_DIR="$(pwd)/${CARGO_TARGET_DIR:-target}/debug" bash bench/soak.sh 60 20000

# The Debian packages of the three daemons (issue 15): cargo-deb builds
# them from one build (the deb-test profile), dpkg installs them, a pool runs from the
# installed binaries and configs as the packages' `poolflow` user and its
# store must pass the audit, then they are purged (tests/debian-packages.sh,
# docs/debian-packages.md). It says SKIPPED without root and fails under CI
# when it cannot run.
echo "== Debian packages (tests/debian-packages.sh)"
bash tests/debian-packages.sh
