#!/usr/bin/env bash
# The Debian packages of the three daemons, end to end (issue 15): builds
# them (deploy/deb/build.sh: cargo-deb over one build, in the deb-test profile), installs
# them with dpkg, checks that binaries, conffiles, systemd units, the
# `poolflow` system user and its state directory landed, then runs a small
# pool from the installed binaries and the installed configs as that user
# (registrar, collector, `exporter stream` of a few thousand billing
# records) and requires `collector audit` to pass on the collector's store.
# Finally purges the packages.
#
# systemd is not PID 1 in a container, so the daemons run directly, the way
# their units start them (runuser -u poolflow, cwd /var/lib/poolflow, the
# /etc/poolflow files), inside a private network namespace so that the
# configs' fixed ports (3863, 4739, 9899) meet nothing else on the host.
#
# Needs root (dpkg, runuser, unshare) and openssl; without them it prints
# SKIPPED, and fails under CI (CI set). Every wait is bounded.
set -euo pipefail
script=$(realpath "$0")
cd "$(dirname "$script")/.."

records=5000
daemons=(registrar collector exporter)
packages=(poolflow-registrar poolflow-collector poolflow-exporter)

cannot_run() {
  if [ -n "${CI:-}" ]; then
    echo "FAIL: Debian package test: $1; CI must run it" >&2
    exit 1
  fi
  echo "SKIPPED: Debian package test: $1" >&2
  exit 0
}

fail() {
  echo "FAIL: Debian package test: $*" >&2
  exit 1
}

say() { echo "== debian-packages: $*"; }

# Polls `condition` (a command) every 0.2 s for at most `seconds`.
wait_for() { # seconds description condition...
  local seconds=$1 description=$2
  shift 2
  local tries=$(( seconds * 5 ))
  for _ in $(seq "$tries"); do
    "$@" && return 0
    sleep 0.2
  done
  fail "$description: not within ${seconds}s"
}

# The daemon under a `runuser` started in the background: signals go to it
# directly, because runuser, sent SIGTERM, passes it on but SIGKILLs its
# child two seconds later, sooner than a collector's graceful stop may end.
daemon_of() { pgrep -P "$1" | head -n 1; }

# Whether a background child has exited (a zombie until waited for counts:
# `kill -0` would still find it).
exited() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 0
  [[ $state == Z* ]]
}

# --- inside the private network namespace: the pool -------------------------
if [ "${1:-}" = --pool-in-namespace ]; then
  run=$2
  ip link set lo up
  cd /var/lib/poolflow
  as_poolflow() { runuser -u poolflow -- "$@"; }
  # runuser pids of the daemons (started without the function above, so
  # that $! is runuser's pid and not a subshell's).
  pids=()
  cleanup_pool() {
    for pid in "${pids[@]}"; do
      kill -KILL $(pgrep -P "$pid") "$pid" 2>/dev/null || true
    done
  }
  trap cleanup_pool EXIT
  trap 'exit 1' TERM INT

  say "registrar: /usr/bin/registrar run --config /etc/poolflow/registrar.toml"
  runuser -u poolflow -- registrar run --config /etc/poolflow/registrar.toml \
    >"$run/registrar.out" 2>"$run/registrar.log" &
  registrar=$!
  pids+=("$registrar")
  wait_for 20 "registrar status endpoint (127.0.0.1:3864)" \
    registrar dump --status 127.0.0.1:3864 >/dev/null 2>&1

  # The collector listens where its file says, but SCTP only on loopback:
  # the address it advertises to the pool must be one the exporter reaches.
  say "collector: /usr/bin/collector run --config /etc/poolflow/collector.toml --sctp 127.0.0.1:9899"
  runuser -u poolflow -- collector run --config /etc/poolflow/collector.toml --sctp 127.0.0.1:9899 \
    >"$run/collector.out" 2>"$run/collector.log" &
  collector=$!
  pids+=("$collector")
  registered() { registrar dump --status 127.0.0.1:3864 2>/dev/null | grep -q 127.0.0.1:9899; }
  wait_for 30 "collector registered under the pool handle" registered

  say "exporter: /usr/bin/exporter stream --config /etc/poolflow/exporter.toml --records $records"
  set +e
  timeout 120 runuser -u poolflow -- exporter stream --config /etc/poolflow/exporter.toml \
    --records "$records" --rate 2000 --exit-drain-timeout 20s \
    >"$run/exporter.out" 2>"$run/exporter.log"
  exporter_status=$?
  set -e
  [ "$exporter_status" = 0 ] || {
    tail -n 20 "$run/exporter.log" >&2
    fail "exporter stream exited $exporter_status (log: $run/exporter.log)"
  }

  say "stopping the collector (SIGTERM: deregister, commit, exit)"
  collector_daemon=$(daemon_of "$collector")
  [ -n "$collector_daemon" ] || fail "the collector is not running (log: $run/collector.log)"
  kill -TERM "$collector_daemon"
  wait_for 60 "collector stop" exited "$collector"
  wait "$collector" || fail "collector exited $? (log: $run/collector.log)"
  kill -TERM "$(daemon_of "$registrar")" 2>/dev/null || true
  wait_for 20 "registrar stop" exited "$registrar"

  say "audit of the installed collector's store (/var/lib/poolflow/collector.sqlite)"
  [ "$(stat -c %U /var/lib/poolflow/collector.sqlite)" = poolflow ] ||
    fail "the store is not owned by poolflow"
  as_poolflow collector audit --quiet --database /var/lib/poolflow/collector.sqlite \
    --exporter-state /var/lib/poolflow/exporter.state ||
    fail "collector audit did not pass"
  stored=$(as_poolflow collector sql --database /var/lib/poolflow/collector.sqlite \
    --format csv "SELECT count(*) FROM flows WHERE billing_exporter = 1" | tail -n 1)
  [ "$stored" = "$records" ] || fail "collector sql counts $stored records, expected $records"
  say "pool from the installed packages: $records records streamed, stored and audited"
  exit 0
fi

# --- outside: build, install, check, run, purge ------------------------------
[ "$(id -u)" = 0 ] || cannot_run "needs root (dpkg, runuser, a network namespace)"
for tool in dpkg apt-get runuser unshare ip openssl pgrep; do
  command -v "$tool" >/dev/null || cannot_run "needs $tool"
done
for package in "${packages[@]}"; do
  if dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed'; then
    fail "$package is installed on this host already; this test would purge it"
  fi
done
for dir in /etc/poolflow /var/lib/poolflow; do
  [ ! -e "$dir" ] || fail "$dir exists already; this test would mix its files with an installation's"
done
getent passwd poolflow >/dev/null && fail "user poolflow exists already; this test creates and removes it"

run=$(mktemp -d /tmp/poolflow-debian.XXXXXX)
chmod 755 "$run"
cleanup() {
  status=$?
  # Packages keep the user and the store on purge (billing data outlives
  # the software); the test removes what it made.
  dpkg --purge "${packages[@]}" >/dev/null 2>&1 || true
  rm -rf /etc/poolflow /var/lib/poolflow
  if getent passwd poolflow >/dev/null; then
    deluser --quiet --system poolflow >/dev/null 2>&1 || userdel poolflow || true
  fi
  getent group poolflow >/dev/null && { delgroup --quiet --system poolflow >/dev/null 2>&1 || groupdel poolflow || true; }
  [ "$status" = 0 ] && rm -rf "$run" || echo "(logs kept in $run)" >&2
}
trap cleanup EXIT

say "building the packages (deploy/deb/build.sh)"
# The deb-test profile (Cargo.toml): the packaging is under test, not the
# optimizer, and a release build would double CI's time.
POOLFLOW_DEB_PROFILE="${POOLFLOW_DEB_PROFILE:-deb-test}" bash deploy/deb/build.sh >"$run/debs" \
  || fail "deploy/deb/build.sh failed"
mapfile -t debs <"$run/debs"
[ "${#debs[@]}" = 3 ] || fail "expected 3 packages, build.sh printed: ${debs[*]}"

say "installing: dpkg -i ${debs[*]##*/}"
if ! dpkg -i "${debs[@]}"; then
  DEBIAN_FRONTEND=noninteractive apt-get install -f -y -qq ||
    fail "the packages' dependencies could not be installed"
fi

say "checking what the packages installed"
for i in 0 1 2; do
  daemon=${daemons[$i]} package=${packages[$i]}
  [ -x "/usr/bin/$daemon" ] || fail "/usr/bin/$daemon missing"
  "/usr/bin/$daemon" --version >/dev/null || fail "/usr/bin/$daemon --version failed"
  dpkg-query -W -f='${Conffiles}\n' "$package" | grep -q "/etc/poolflow/$daemon.toml" ||
    fail "/etc/poolflow/$daemon.toml is not a conffile of $package"
  [ -f "/etc/poolflow/$daemon.toml" ] || fail "/etc/poolflow/$daemon.toml missing"
  unit=$(dpkg -L "$package" | grep "/systemd/system/$package.service$" || true)
  [ -n "$unit" ] && [ -f "$unit" ] || fail "$package installed no $package.service"
  exec_start=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
  [ "$exec_start" = "/usr/bin/$daemon" ] || fail "$unit starts $exec_start, not /usr/bin/$daemon"
  grep -q '^User=poolflow$' "$unit" || fail "$unit does not run as poolflow"
  config=$(sed -n 's/^ExecStart=.*--config \([^ ]*\).*/\1/p' "$unit")
  [ -f "$config" ] || fail "$unit reads $config, which no package installed"
done
passwd_entry=$(getent passwd poolflow) || fail "postinst made no user poolflow"
uid=$(echo "$passwd_entry" | cut -d: -f3)
[ "$uid" -lt 1000 ] || fail "poolflow is not a system user (uid $uid)"
[ "$(stat -c '%U:%G %a' /var/lib/poolflow)" = "poolflow:poolflow 750" ] ||
  fail "/var/lib/poolflow is $(stat -c '%U:%G %a' /var/lib/poolflow), not poolflow:poolflow 750"

# What every pool site adds to the packaged files, as their comments say:
# the collector's cookie signing key, the public keys the exporter's file
# lists (cookie-c1.pub: this collector; cookie-c2.pub: a second collector's),
# and a [pool] section, which the packaged collector.toml leaves out so
# that a fresh install is a standalone collector.
say "site setup: cookie keys and the collector's [pool] section"
(umask 077; openssl genpkey -algorithm ed25519 -out /etc/poolflow/cookie.pem 2>/dev/null)
chown poolflow:poolflow /etc/poolflow/cookie.pem
openssl pkey -in /etc/poolflow/cookie.pem -pubout -out /etc/poolflow/cookie-c1.pub
openssl genpkey -algorithm ed25519 2>/dev/null | openssl pkey -pubout -out /etc/poolflow/cookie-c2.pub
pool_handle=$(sed -n 's/^pool_handle = "\(.*\)"/\1/p' /etc/poolflow/exporter.toml)
[ -n "$pool_handle" ] || fail "no pool_handle in /etc/poolflow/exporter.toml"
cat >>/etc/poolflow/collector.toml <<EOF

# Added by tests/debian-packages.sh (site setup).
[pool]
handle = "$pool_handle"
registrars = ["sctp:127.0.0.1:3863"]
cookie_signing_key_file = "/etc/poolflow/cookie.pem"
cookie_verify_key_files = ["/etc/poolflow/cookie-c1.pub", "/etc/poolflow/cookie-c2.pub"]
EOF

say "running a pool from the installed binaries and configs (private network namespace)"
timeout 300 unshare --net -- bash "$script" --pool-in-namespace "$run" ||
  fail "the pool from the installed packages failed (logs in $run)"

say "purging: dpkg --purge ${packages[*]}"
dpkg --purge "${packages[@]}"
for daemon in "${daemons[@]}"; do
  [ ! -e "/usr/bin/$daemon" ] || fail "/usr/bin/$daemon left after purge"
  [ ! -e "/etc/poolflow/$daemon.toml" ] || fail "/etc/poolflow/$daemon.toml left after purge"
done
echo "debian-packages: 1 passed, 0 failed"
