#!/usr/bin/env bash
# Pool-user throughput benchmark (not a test): `exporter stream` as fast as
# the pool takes it, billing on (sequence, replay buffer, cookies after each
# SQLite commit), into one collector over SCTP-over-UDP and over framed TCP.
# The peer measured in the same run is `exporter generate` into the same
# collector over the same transport: plain IPFIX without pool, cookies or
# replay buffer. The ratio stream/generate is the cost of billing continuity;
# durable/stream the cost of durable intake ([buffer] durable: an fsynced
# intake journal), measured in the same run.
# Every run is checked: the audit must pass with every record present.
# Cookies are version 2 (each cookie Ed25519-signed by the collector and
# checked by the exporter against the public key); POOLFLOW_BENCH_COOKIES=hmac
# measures version 1 (shared HMAC key, unchecked by the exporter) instead.
# Usage: bench/stream.sh [RECORDS]   (default 500000)
set -euo pipefail
cd "$(dirname "$0")/.."
records="${1:-500000}"
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
sleep 0.5

# Records per second of one command's own report ("... in X s").
rate_of() { # records log
  python3 -c 'import re,sys; t=float(re.findall(r"in ([0-9.]+) s", open(sys.argv[2]).read())[-1]); print("%.0f" % (int(sys.argv[1])/t))' "$1" "$2"
}

echo "cookies: $cookies"
printf '%-11s %14s %15s %16s %14s %8s %6s\n' transport "stream rec/s" "durable rec/s" "generate rec/s" stream/generate durable/stream audit
for transport in sctp framed-tcp; do
  port=$((base + 2 + ${#transport} * 2))
  case $transport in
    sctp) listen="sctp_listen = [\"127.0.0.1:$port\"]
tcp_listen = []"; gen=sctp ;;
    # generate speaks RFC 7011 TCP: its peer is the plain TCP listener.
    framed-tcp) listen="sctp_listen = []
framed_tcp_listen = [\"127.0.0.1:$port\"]
tcp_listen = [\"127.0.0.1:$((port + 1))\"]"; gen=tcp ;;
  esac
  for kind in stream durable generate; do
    db="$run/$transport-$kind.sqlite"
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
    sleep 1
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
$exporter_keys
[buffer]
memory_records = 1000000
max_records = 4000000
spill_dir = "$run/spill-$transport-$kind"
$durable
EOF2
      "$bin/exporter" stream --config "$run/exporter.toml" --records "$records" \
        >"$run/$transport-$kind.log" 2>&1
      rate=$(rate_of "$records" "$run/$transport-$kind.log")
      if [ "$kind" = stream ]; then stream_rate=$rate; else durable_rate=$rate; fi
    else
      to_port=$port; [ "$gen" = tcp ] && to_port=$((port + 1))
      # Timed until every record is committed in SQLite (polled through a
      # reader), as the stream is timed until its last cookie, which the
      # collector sends after the commit.
      started=$(date +%s.%N)
      "$bin/exporter" generate --to "127.0.0.1:$to_port" --transport "$gen" --records "$records" \
        >"$run/$transport-generate.log" 2>&1
      stored=0
      for _ in $(seq 1200); do
        stored=$("$bin/collector" stats --database "$db" 2>/dev/null | awk 'NR > 1 { n += $4 } END { print n + 0 }')
        [ "$stored" = "$records" ] && break
        sleep 0.05
      done
      done_at=$(date +%s.%N)
      [ "$stored" = "$records" ] || { echo "generate: only $stored of $records stored" >&2; exit 1; }
      generate_rate=$(python3 -c "print('%.0f' % ($records/($done_at-$started)))")
    fi
    kill -TERM "$collector"; wait "$collector" || true
  done
  audit=PASS
  for kind in stream durable; do
    "$bin/collector" audit --quiet --database "$run/$transport-$kind.sqlite" >/dev/null || audit=FAIL
  done
  ratio=$(python3 -c "print('%.2f' % ($stream_rate/$generate_rate))")
  durable_ratio=$(python3 -c "print('%.2f' % ($durable_rate/$stream_rate))")
  printf '%-11s %14s %15s %16s %14s %8s %6s\n' "$transport" "$stream_rate" "$durable_rate" "$generate_rate" "$ratio" "$durable_ratio" "$audit"
done
echo "(logs in $run)"
