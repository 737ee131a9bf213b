#!/usr/bin/env bash
# Pool-user throughput benchmark (not a test): `exporter stream` as fast as
# the pool takes it, billing on (sequence, replay buffer, cookies after each
# SQLite commit), into one collector over SCTP-over-UDP and over framed TCP.
# The peer measured in the same run is `exporter generate` into the same
# collector over the same transport: plain IPFIX without pool, cookies or
# replay buffer. The ratio stream/generate is the cost of billing continuity;
# durable/stream the cost of durable intake ([buffer] durable: an fsynced
# intake journal), measured in the same run.
#
# Fair to the peer and to the reader:
# - every trial is timed end to end: the stream until its last cookie (sent
#   after the collector's commit), generate until the collector's store
#   holds every record, so no socket or queue can hide a backlog;
# - stream and generate get the same transport options (UDP GSO on both, or
#   on neither: POOLFLOW_BENCH_GSO=0);
# - records per CPU-second: the records over the CPU time (user + system)
#   of the sending process and the collector during the trial;
# - POOLFLOW_BENCH_RUNS runs (default 3), kinds alternating within a run;
#   the table gives medians and the ratios of each run.
# Every trial is checked: the audit must pass with every record present.
# Cookies are version 2 (each cookie Ed25519-signed by the collector and
# checked by the exporter against the public key); POOLFLOW_BENCH_COOKIES=hmac
# measures version 1 (shared HMAC key, unchecked by the exporter) instead.
# Usage: bench/stream.sh [RECORDS]   (default 40000000 per trial: about
# 10 s for the stream at 4M records/s, 8.4-10.4 s measured)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-40000000}"
runs="${POOLFLOW_BENCH_RUNS:-3}"
gso="${POOLFLOW_BENCH_GSO:-1}"
cargo build --release --locked -q -p registrar -p collector -p exporter
bin="${CARGO_TARGET_DIR:-target}/release"
run=$(mktemp -d /tmp/poolflow-stream.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
cookies="${POOLFLOW_BENCH_COOKIES:-signed}"
case $cookies in
  signed)
    (umask 077; openssl genpkey -algorithm ed25519 -out "$run/cookie.pem")
    openssl pkey -in "$run/cookie.pem" -pubout -out "$run/cookie.pub"
    collector_keys="cookie_signing_key_file = \"$run/cookie.pem\""
    exporter_keys="cookie_public_key_files = [\"$run/cookie.pub\"]" ;;
  hmac)
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$run/pool.key"
    collector_keys="cookie_key_file = \"$run/pool.key\""
    exporter_keys="" ;;
  *) echo "POOLFLOW_BENCH_COOKIES must be signed or hmac" >&2; exit 2 ;;
esac
case $gso in
  1) exporter_gso="udp_segmentation_offload = true"; generate_gso=(--udp-segmentation-offload) ;;
  0) exporter_gso="udp_segmentation_offload = false"; generate_gso=() ;;
  *) echo "POOLFLOW_BENCH_GSO must be 0 or 1" >&2; exit 2 ;;
esac
ticks_per_second=$(getconf CLK_TCK)

base=$((40000 + RANDOM % 10000))
registrar_port=$base
status_port=$((base + 1))
cat > "$run/registrar.toml" <<EOF2
[listen]
tcp = ""
sctp_over_udp = "127.0.0.1:$registrar_port"
status = "127.0.0.1:$status_port"
EOF2
"$bin/registrar" run --config "$run/registrar.toml" >"$run/registrar.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  ss -lun | grep -q ":$registrar_port " && break
  sleep 0.05
done

# CPU seconds (user + system) a running process has used.
cpu_of() { # pid
  awk -v hz="$ticks_per_second" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}
# Seconds of a command's own report ("... in X s").
seconds_in() { # log
  python3 -c 'import re,sys; print(re.findall(r"in ([0-9.]+) s", open(sys.argv[1]).read())[-1])' "$1"
}
# Waits (bounded) until the collector listens on its data port.
wait_listening() { # port
  for _ in $(seq 200); do
    ss -lnu | grep -q ":$1 " && return 0
    ss -lnt | grep -q ":$1 " && return 0
    sleep 0.05
  done
  echo "collector never listened on $1" >&2; exit 1
}

results="$run/results.tsv"
: > "$results"
echo "cookies: $cookies, UDP GSO (stream and generate alike): $gso, $records records per trial, $runs runs"
for r in $(seq "$runs"); do
  for transport in sctp framed-tcp; do
    port=$((base + 2 + ${#transport} * 2))
    case $transport in
      sctp) listen="sctp_listen = [\"127.0.0.1:$port\"]
tcp_listen = []"; gen=sctp; data_port=$port ;;
      # generate speaks RFC 7011 TCP: its peer is the plain TCP listener.
      framed-tcp) listen="sctp_listen = []
framed_tcp_listen = [\"127.0.0.1:$port\"]
tcp_listen = [\"127.0.0.1:$((port + 1))\"]"; gen=tcp; data_port=$port ;;
    esac
    for kind in stream durable generate; do
      db="$run/$transport-$kind.sqlite"
      rm -rf "$db" "$db"-* "$db.segments" "$run/spill-$transport-$kind" \
        "$run/journal-$transport" "$run/$transport-$kind.state"
      pool=""
      if [ "$kind" != generate ]; then
        pool="[pool]
handle = \"bench-$transport\"
registrars = [\"sctp:127.0.0.1:$registrar_port\"]
$collector_keys"
      fi
      cat > "$run/c.toml" <<EOF2
database = "$db"
udp_listen = []
$listen
$pool
EOF2
      "$bin/collector" run --config "$run/c.toml" >"$run/$transport-$kind.collector.log" 2>&1 &
      collector=$!
      wait_listening "$data_port"
      if [ "$kind" != generate ]; then
        # durable: the same stream with durable intake (every record in the
        # fsynced intake journal before it counts as taken in).
        durable=""
        [ "$kind" = durable ] && durable="durable = true
journal_dir = \"$run/journal-$transport\""
        cat > "$run/exporter.toml" <<EOF2
exporter_id = 9
pool_handle = "bench-$transport"
registrars = ["sctp:127.0.0.1:$registrar_port"]
state_file = "$run/$transport-$kind.state"
$exporter_gso
$exporter_keys
[buffer]
memory_records = 1000000
max_records = 4000000
spill_dir = "$run/spill-$transport-$kind"
$durable
EOF2
        collector_cpu_before=$(cpu_of "$collector")
        /usr/bin/time -f '%U %S' -o "$run/sender.cpu" \
          "$bin/exporter" stream --config "$run/exporter.toml" --records "$records" \
          >"$run/$transport-$kind.log" 2>&1
        collector_cpu_after=$(cpu_of "$collector")
        seconds=$(seconds_in "$run/$transport-$kind.log")
      else
        to_port=$port; [ "$gen" = tcp ] && to_port=$((port + 1))
        # Timed until every record is committed in SQLite (polled through a
        # reader), as the stream is timed until its last cookie, which the
        # collector sends after the commit.
        collector_cpu_before=$(cpu_of "$collector")
        started=$(date +%s.%N)
        gso_flag=()
        [ "$gen" = sctp ] && gso_flag=("${generate_gso[@]}")
        /usr/bin/time -f '%U %S' -o "$run/sender.cpu" \
          "$bin/exporter" generate --to "127.0.0.1:$to_port" --transport "$gen" --records "$records" \
          "${gso_flag[@]}" >"$run/$transport-generate.log" 2>&1
        stored=0
        for _ in $(seq 2400); do
          stored=$("$bin/collector" stats --database "$db" 2>/dev/null | awk 'NR > 1 { n += $4 } END { print n + 0 }')
          [ "$stored" = "$records" ] && break
          sleep 0.05
        done
        done_at=$(date +%s.%N)
        collector_cpu_after=$(cpu_of "$collector")
        [ "$stored" = "$records" ] || { echo "generate: only $stored of $records stored" >&2; exit 1; }
        seconds=$(python3 -c "print('%.3f' % ($done_at - $started))")
      fi
      sender_cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$run/sender.cpu")
      kill -TERM "$collector"; wait "$collector" || true
      audit=PASS
      if [ "$kind" != generate ]; then
        "$bin/collector" audit --quiet --database "$db" >/dev/null || audit=FAIL
      fi
      collector_cpu=$(python3 -c "print('%.2f' % ($collector_cpu_after - $collector_cpu_before))")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$transport" "$kind" "$seconds" "$sender_cpu" \
        "$collector_cpu" "$audit" >> "$results"
      printf 'run %s %-10s %-8s %6.2f s  sender %5.2f CPU-s  collector %5.2f CPU-s  audit %s\n' \
        "$r" "$transport" "$kind" "$seconds" "$sender_cpu" "$collector_cpu" "$audit"
      # The stores of a 40M-record trial take about 4 GB each.
      rm -rf "$db" "$db"-* "$db.segments" "$run/spill-$transport-$kind" \
        "$run/journal-$transport"
    done
  done
done

python3 - "$results" "$records" <<'EOF2'
import statistics, sys
from collections import defaultdict
path, records = sys.argv[1], int(sys.argv[2])
trials = defaultdict(dict)  # (transport, kind) -> run -> (rate, per_cpu)
failed = False
for line in open(path):
    run, transport, kind, seconds, sender, collector, audit = line.split()
    cpu = float(sender) + float(collector)
    trials[(transport, kind)][run] = (records / float(seconds), records / cpu if cpu else 0.0,
                                      float(sender) / float(seconds), float(collector) / float(seconds))
    failed |= audit != "PASS"
print()
print("median of %d runs; rec/CPU-s = records / (sender + collector CPU seconds)" % len(trials[("sctp", "stream")]))
print("%-11s %-9s %12s %12s %13s %16s" % ("transport", "kind", "records/s", "rec/CPU-s", "sender cores", "collector cores"))
for (transport, kind), by_run in trials.items():
    rows = list(by_run.values())
    med = lambda i: statistics.median(r[i] for r in rows)
    print("%-11s %-9s %12.0f %12.0f %13.2f %16.2f" % (transport, kind, med(0), med(1), med(2), med(3)))
for transport in ("sctp", "framed-tcp"):
    s, d, g = (trials[(transport, k)] for k in ("stream", "durable", "generate"))
    per_run = lambda a, b, i: ", ".join("%.2f" % (a[r][i] / b[r][i]) for r in sorted(a))
    print("%-11s stream/generate rate per run: %s; per CPU-s: %s; durable/stream rate: %s"
          % (transport, per_run(s, g, 0), per_run(s, g, 1), per_run(d, s, 0)))
print("audit:", "FAIL" if failed else "PASS (every stream trial)")
sys.exit(1 if failed else 0)
EOF2
echo "(logs in $run)"
