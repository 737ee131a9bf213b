#!/usr/bin/env bash
# Benchmark of the PostgreSQL shared tier (issue 15's goals; not a test):
# one collector (release build) receives `exporter generate` over TCP at a
# target rate, commits to SQLite and ships to a throw-away PostgreSQL on
# loopback (tests/postgres/start.sh), all on this machine. Prints, from the
# collector's own metrics sampled every 200 ms:
#   - the SQLite commit rate and the rate records reach PostgreSQL;
#   - the shipping lag (poolflow_collector_shipping_lag_seconds) at its
#     highest during the run, and how long after the last SQLite commit
#     PostgreSQL held every record;
# then, after an outage (PostgreSQL stopped while RECORDS/5 more records
# are committed, then started), the rate the backlog drains at; then times
# the hourly per-prefix report (docs/postgres.md) over every record shipped
# (10M + 2M by default).
# Usage: bench/postgres.sh [RATE] [RECORDS]   (default 500000 10000000)
# POOLFLOW_BENCH_PG_CONNECTIONS sets `postgres.connections` (default 2),
# POOLFLOW_BENCH_PG_BATCH_BLOCKS `postgres.batch_blocks` (default: the
# collector's); POOLFLOW_PG_SERVER_OPTIONS the server's options (default
# max_wal_size=8GB, below);
# POOLFLOW_BENCH_INTAKE_ONLY=1 stops after the run at RATE (no outage, no
# report), for repeating the lag measurement; POOLFLOW_BENCH_BIN=DIR runs
# the collector and exporter in DIR instead of building them (comparing
# two builds).
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-500000}"
records="${2:-10000000}"
if [ -n "${POOLFLOW_BENCH_BIN:-}" ]; then
  bin="$POOLFLOW_BENCH_BIN"
else
  cargo build --release --locked -q -p collector -p exporter
  bin="${CARGO_TARGET_DIR:-target}/release"
fi
run=$(mktemp -d /tmp/poolflow-pg.XXXXXX)
chmod 755 "$run"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  bash tests/postgres/stop.sh "$run/pg" || true
  rm -rf "$run"
}
trap cleanup EXIT

base=$((30000 + RANDOM % 10000))
pg_port=$base; ipfix_port=$((base + 1)); metrics_port=$((base + 2))
# The server sized for this load as PostgreSQL itself asks: at its default
# max_wal_size (1GB) it checkpoints every 7-8 s here and logs "checkpoints
# are occurring too frequently"; each checkpoint's fsync stalls the COPYs
# for up to a second. POOLFLOW_PG_SERVER_OPTIONS="" runs the defaults.
export POOLFLOW_PG_SERVER_OPTIONS="${POOLFLOW_PG_SERVER_OPTIONS--c max_wal_size=8GB}"
url=$(bash tests/postgres/start.sh "$run/pg" "$pg_port")
cat > "$run/collector.toml" <<EOF2
database = "$run/collector.sqlite"
udp_listen = []
tcp_listen = ["127.0.0.1:$ipfix_port"]
sctp_listen = []
metrics_listen = "127.0.0.1:$metrics_port"
[postgres]
url = "$url"
collector_name = "bench"
connections = ${POOLFLOW_BENCH_PG_CONNECTIONS:-2}
${POOLFLOW_BENCH_PG_BATCH_BLOCKS:+batch_blocks = $POOLFLOW_BENCH_PG_BATCH_BLOCKS}
EOF2
"$bin/collector" run --config "$run/collector.toml" >"$run/collector.out" 2>"$run/collector.log" &
pids+=($!)
for _ in $(seq 100); do grep -qs "listening tcp" "$run/collector.out" && break; sleep 0.1; done
grep -q "listening tcp" "$run/collector.out" || { cat "$run/collector.log" >&2; exit 1; }

echo "PostgreSQL $(psql -At "$url" -c 'SHOW server_version') (max_wal_size $(psql -At "$url" -c 'SHOW max_wal_size')), $(nproc) cores, target $rate records/s, $records records"
"$bin/exporter" generate --to "127.0.0.1:$ipfix_port" --transport tcp \
  --records "$records" --rate "$rate" >"$run/generate.log" 2>&1 &
generator=$!
pids+=($generator)

# Samples the collector's metrics every 200 ms.
cat > "$run/sample.py" <<'PY'
import os, re, sys, time, urllib.request
port, mode, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
def sample():
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    def value(name):
        m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    return (value("poolflow_collector_records_stored_total"),
            value("poolflow_collector_shipped_records_total"),
            value("poolflow_collector_shipping_lag_seconds"))
start = time.monotonic()
deadline = start + 1800
if mode == "stored":  # wait until SQLite holds `target` records
    while sample()[0] < target:
        if time.monotonic() > deadline: sys.exit("SQLite did not get every record")
        time.sleep(0.2)
    sys.exit(0)
if mode == "drain":   # PostgreSQL just came back: how fast does the backlog go?
    baseline = int(sys.argv[4])
    while sample()[1] <= baseline:
        if time.monotonic() > deadline: sys.exit("shipping did not resume")
        time.sleep(0.05)
    resumed = time.monotonic()
    while sample()[1] < target:
        if time.monotonic() > deadline: sys.exit("the backlog did not drain")
        time.sleep(0.05)
    took = time.monotonic() - resumed
    print(f"after the outage: shipping resumed {resumed - start:.1f} s after PostgreSQL was back "
          f"(reconnect backoff), drained {target - baseline:,} records in {took:.1f} s: "
          f"{(target - baseline) / took:,.0f} records/s")
    sys.exit(0)
# CPU seconds (utime + stime) of the collector's shipper thread, of the
# rest of the collector (receiving, SQLite), of the generator and of every
# PostgreSQL process (backends, WAL writer, checkpointer), for records per
# CPU-second: where the machine's cores go.
collector_pid, generator_pid = int(sys.argv[4]), int(sys.argv[5])
postmaster_pid = int(open(sys.argv[6]).readline())
tick = os.sysconf("SC_CLK_TCK")
def cpu_of(stat_path):
    try:
        fields = open(stat_path).read().rsplit(")", 1)[1].split()
    except OSError:
        return None, 0.0
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
generator_seen = 0.0  # the generator exits before the end: its last reading
def cpu():
    global generator_seen
    generator_seen = max(generator_seen, cpu_of(f"/proc/{generator_pid}/stat")[1])
    shipper = intake = 0.0
    for task in os.listdir(f"/proc/{collector_pid}/task"):
        try:
            name = open(f"/proc/{collector_pid}/task/{task}/comm").read().strip()
        except OSError:
            continue
        seconds = cpu_of(f"/proc/{collector_pid}/task/{task}/stat")[1]
        if name == "pg-shipper":
            shipper += seconds
        else:
            intake += seconds
    postgres = cpu_of(f"/proc/{postmaster_pid}/stat")[1]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        parent, seconds = cpu_of(f"/proc/{pid}/stat")
        if parent == postmaster_pid:
            postgres += seconds
    return {"collector shipper thread": shipper, "collector intake (other threads)": intake,
            "generator": generator_seen, "PostgreSQL (all processes)": postgres}
cpu_before = cpu()
first_stored = sqlite_done = pg_done = None
max_lag = 0.0
while time.monotonic() < deadline:
    stored, shipped, lag = sample()
    now = time.monotonic()
    generator_seen = max(generator_seen, cpu_of(f"/proc/{generator_pid}/stat")[1])
    if first_stored is None and stored > 0:
        first_stored = now
    max_lag = max(max_lag, lag)
    if sqlite_done is None and stored >= target:
        sqlite_done = now
    if shipped >= target:
        pg_done = now
        break
    time.sleep(0.2)
if pg_done is None:
    sys.exit(f"PostgreSQL did not get every record within 30 min ({shipped:.0f} of {target})")
print(f"SQLite commit rate:      {target / (sqlite_done - first_stored):12,.0f} records/s")
print(f"into PostgreSQL:         {target / (pg_done - first_stored):12,.0f} records/s")
print(f"shipping lag, highest:   {max_lag:12.1f} s (poolflow_collector_shipping_lag_seconds)")
print(f"PostgreSQL complete:     {pg_done - sqlite_done:12.1f} s after the last SQLite commit")
cpu_after = cpu()
wall = pg_done - first_stored
for part, seconds in cpu_after.items():
    used = seconds - cpu_before[part]
    print(f"CPU {part + ':':34} {used:6.1f} s ({used / wall:4.0%} of a core), {target / max(used, 0.01):12,.0f} records per CPU-second")
with open("/proc/loadavg") as f:
    print(f"load average at the end: {' '.join(f.read().split()[:3])}")
PY
python3 "$run/sample.py" "$metrics_port" run "$records" "${pids[0]}" "$generator" "$run/pg/data/postmaster.pid"
wait "$generator" || { cat "$run/generate.log" >&2; exit 1; }
grep -E "sent|records" "$run/generate.log" | tail -1 | sed 's/^/generator: /'
[ -n "${POOLFLOW_BENCH_INTAKE_ONLY:-}" ] && exit 0

# An outage: PostgreSQL stopped while a backlog of `records / 5` builds up
# in SQLite, then started again: the drain rate is shipping alone.
backlog=$((records / 5))
bash tests/postgres/stop.sh "$run/pg"
"$bin/exporter" generate --to "127.0.0.1:$ipfix_port" --transport tcp \
  --records "$backlog" >"$run/generate2.log" 2>&1
python3 "$run/sample.py" "$metrics_port" stored $((records + backlog))
bash tests/postgres/start.sh "$run/pg" "$pg_port" >/dev/null
python3 "$run/sample.py" "$metrics_port" drain $((records + backlog)) "$records"

rows=$(psql -At "$url" -c "SELECT count(*) FROM flows")
psql -q "$url" -c "VACUUM ANALYZE flows" >/dev/null
report="SELECT date_trunc('hour', flow_start) AS hour,
       network(set_masklen(dst_addr, 24)) AS prefix, sum(octets) AS bytes
FROM flows GROUP BY 1, 2 ORDER BY 1, 3 DESC"
for attempt in 1 2; do
  t0=$(date +%s.%N)
  groups=$(psql -At "$url" -c "$report" | wc -l)
  t1=$(date +%s.%N)
  printf 'hourly per-prefix report over %s rows (%s groups), run %s: %.2f s\n' \
    "$rows" "$groups" "$attempt" "$(echo "$t1 - $t0" | bc)"
done
printf 'PostgreSQL size: %s, SQLite store size (database and segments): %s\n' \
  "$(psql -At "$url" -c "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c WHERE c.relname LIKE 'flows%' AND c.relkind = 'r'")" \
  "$(du -ch "$run/collector.sqlite" "$run/collector.sqlite.segments" | tail -1 | cut -f1)"
