#!/bin/sh
# /init of the RSPLIB interop VM (rsplib.sh builds it). Every step asserts;
# the first failure prints "rsplib-vm: FAIL: ..." with the logs' tails and
# ends the run with "kernel-vm: exit 1". Waits are bounded polls of state.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in crc32c_generic libcrc32c udp_tunnel ip6_udp_tunnel sctp dummy; do
    insmod /lib/modules/$m.ko || echo "rsplib-vm: insmod $m failed"
done
echo "kernel-vm: $(cat /proc/version)"
cd /tmp

# RSPLIB refuses loopback addresses: two documentation-range addresses on a
# dummy interface, one per registrar (each on the standard ports).
POOLFLOW=192.0.2.1 # poolflow's registrar, poolflow's collectors and exporter
RSPLIB=192.0.2.2   # rspregistrar
RSPLIB2=192.0.2.3  # a second rspregistrar (step c2)
ip link set lo up
# dummy.ko makes dummy0 itself (numdummies=1).
ip link show dummy0 >/dev/null 2>&1 || ip link add dummy0 type dummy
ip addr add $POOLFLOW/24 dev dummy0
ip addr add $RSPLIB/24 dev dummy0
ip addr add $RSPLIB2/24 dev dummy0
ip link set dummy0 up

# Milliseconds since boot (/proc/uptime has centiseconds; never below 1 s here).
now_ms() {
    read -r up _ </proc/uptime
    echo $((${up%.*}${up#*.} * 10))
}

finish() {
    [ -n "$capture_pid" ] && kill "$capture_pid" && wait "$capture_pid"
    # The capture leaves on the second serial port, base64 (rsplib.sh decodes it).
    [ -f /tmp/capture.pcap ] && base64 /tmp/capture.pcap >/dev/ttyS1
    echo "kernel-vm: exit $1"
    poweroff -f
}
fail() {
    echo "rsplib-vm: FAIL: $*"
    for f in /tmp/*.log /tmp/*.out; do
        [ -f "$f" ] || continue
        echo "----- $f"
        grep -v "^records in" "$f" >/tmp/shown
        if [ "$(wc -l </tmp/shown)" -le 160 ]; then
            cat /tmp/shown
        else
            head -n 100 /tmp/shown
            echo "[...]"
            tail -n 60 /tmp/shown
        fi
    done
    finish 1
}
pass() { echo "rsplib-vm: PASS: $*"; }
# wait_until SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s.
wait_until() {
    secs=$1 what=$2
    shift 2
    deadline=$(($(now_ms) + secs * 1000))
    until "$@" >/dev/null 2>&1; do
        [ "$(now_ms)" -lt "$deadline" ] || fail "$what (not within $secs s)"
        sleep 0.2
    done
}
alive() { kill -0 "$1" 2>/dev/null; }
# poolflow's registrar as `registrar dump` shows it.
dump() { registrar dump --status 127.0.0.1:3864 >/tmp/dump.out 2>&1; }
pe_count() { dump && sed -n 's/.* \([0-9]*\) pool element(s).*/\1/p' /tmp/dump.out; }
pes_are() { [ "$(pe_count)" = "$1" ]; }

capture_pid=
# tcpdump drops privileges to a user it looks up.
mkdir -p /etc
echo "root:x:0:0:root:/tmp:/bin/sh" >/etc/passwd
echo "root:x:0:" >/etc/group
tcpdump -Z root -i lo -U -w /tmp/capture.pcap 'sctp or udp' >/tmp/tcpdump.log 2>&1 &
capture_pid=$!
wait_until 10 "tcpdump started" grep -q listening /tmp/tcpdump.log

# ---------------------------------------------------------------------------
# (a) RSPLIB's PE, PU and hsdump against poolflow's registrar (kernel SCTP).
registrar run --server-id 305419896 --kernel-sctp $POOLFLOW:3863 --no-tcp --no-sctp-over-udp \
    --enrp-listen $POOLFLOW:9901 --enrp-advertise $POOLFLOW:9901 --enrp-transport kernel-sctp \
    >/tmp/registrar.log 2>&1 &
registrar_pid=$!
wait_until 20 "poolflow registrar answers its status endpoint" dump
alive $registrar_pid || fail "poolflow registrar exited"
grep -q "registrar 0x12345678" /tmp/dump.out || fail "registrar dump does not show server id 0x12345678"
pass "poolflow registrar up (ASAP and ENRP on kernel SCTP at $POOLFLOW)"

rspserver -echo -poolhandle=EchoPool -identifier=287454020 -registrar=$POOLFLOW:3863 \
    -local=$POOLFLOW -loglevel=3 >/tmp/rspserver.log 2>&1 &
rspserver_pid=$!
wait_until 30 "RSPLIB PE (rspserver) registered at poolflow's registrar" pes_are 1
grep -q 'pool "EchoPool"' /tmp/dump.out || fail "pool EchoPool missing: $(cat /tmp/dump.out)"
grep -q "PE 0x11223344" /tmp/dump.out || fail "PE 0x11223344 missing: $(cat /tmp/dump.out)"
grep "PE 0x11223344" /tmp/dump.out | grep -q "$POOLFLOW" || fail "PE 0x11223344 without transport $POOLFLOW"
cat /tmp/dump.out
pass "RSPLIB PE 0x11223344 registered in poolflow's handlespace"

# Keep-alives: the PE is still there after a registrar keep-alive round (5 s
# by default), answered by RSPLIB.
keep_alive_answered() {
    dump && grep -q "keep_alives_sent=[1-9]" /tmp/dump.out &&
        grep -q "keep_alive_failures=0 " /tmp/dump.out &&
        grep "PE 0x11223344" /tmp/dump.out | grep -vq "keep-alive pending"
}
wait_until 30 "a keep-alive answered by RSPLIB's PE" keep_alive_answered
pes_are 1 || fail "RSPLIB PE lost after the first keep-alive"
pass "poolflow's Endpoint Keep-Alive answered by RSPLIB's PE"

# The PU: rspterminal resolves EchoPool at poolflow's registrar and talks to
# the echo PE; stdin stays open until the echo came back (or 30 s passed).
(
    echo "hello-poolflow-registrar"
    deadline=$(($(now_ms) + 30000))
    until grep -q hello-poolflow-registrar /tmp/rspterminal.out 2>/dev/null || [ "$(now_ms)" -ge "$deadline" ]; do
        sleep 0.2
    done
) | timeout 40 rspterminal -poolhandle=EchoPool -registrar=$POOLFLOW:3863 -loglevel=3 \
    >/tmp/rspterminal.out 2>/tmp/rspterminal.log
grep -q hello-poolflow-registrar /tmp/rspterminal.out || fail "rspterminal got no echo through poolflow's registrar"
pass "RSPLIB PU (rspterminal) resolved EchoPool at poolflow's registrar and got its echo"

# hsdump: claims to be a peer registrar, asks for the handlespace over ENRP.
timeout 30 hsdump $POOLFLOW:9901 >/tmp/hsdump.out 2>&1
hsdump_status=$?
cat /tmp/hsdump.out
[ "$hsdump_status" = 0 ] || fail "hsdump exited with $hsdump_status"
grep -q EchoPool /tmp/hsdump.out || fail "hsdump shows no EchoPool"
grep -qi 11223344 /tmp/hsdump.out || fail "hsdump shows no PE 11223344"
pass "hsdump printed poolflow's handlespace with RSPLIB's PE"

# A SIGKILLed RSPLIB PE: the kernel ends its association; how long until
# poolflow's registrar removes it.
killed=$(now_ms)
kill -KILL $rspserver_pid
wait_until 30 "SIGKILLed RSPLIB PE removed" pes_are 0
echo "rsplib-vm: SIGKILLed RSPLIB PE removed after $(($(now_ms) - killed)) ms"
pass "SIGKILLed RSPLIB PE removed from poolflow's handlespace"
kill -TERM $registrar_pid
wait $registrar_pid || fail "poolflow registrar did not exit cleanly on SIGTERM"

# A frozen RSPLIB PE (SIGSTOP: no ABORT, its kernel still acknowledges) is
# found by the keep-alive timers alone: with the defaults (5 s period, 5 s
# timeout) and with fast ones (500 ms each, --keep-alive-period/-timeout).
for timers in default fast; do
    if [ $timers = fast ]; then
        set -- --keep-alive-period 500ms --keep-alive-timeout 500ms
    else
        set --
    fi
    registrar run --server-id 305419896 --kernel-sctp $POOLFLOW:3863 --no-tcp --no-sctp-over-udp "$@" \
        >/tmp/registrar-$timers.log 2>&1 &
    registrar_pid=$!
    wait_until 20 "poolflow registrar ($timers timers) answers its status endpoint" dump
    rspserver -echo -poolhandle=EchoPool -identifier=287454022 -registrar=$POOLFLOW:3863 \
        -local=$POOLFLOW -loglevel=3 >/tmp/rspserver-$timers.log 2>&1 &
    rspserver_pid=$!
    wait_until 30 "RSPLIB PE registered ($timers timers)" pes_are 1
    stopped=$(now_ms)
    kill -STOP $rspserver_pid
    wait_until 60 "SIGSTOPped RSPLIB PE removed ($timers timers)" pes_are 0
    echo "rsplib-vm: SIGSTOPped RSPLIB PE removed after $(($(now_ms) - stopped)) ms ($timers keep-alive timers)"
    grep -q "keep-alive timeout: PE removed" /tmp/registrar-$timers.log ||
        fail "the frozen PE was not removed by the keep-alive timeout ($timers timers)"
    kill -KILL $rspserver_pid
    kill -CONT $rspserver_pid 2>/dev/null
    kill -TERM $registrar_pid
    wait $registrar_pid || fail "poolflow registrar ($timers timers) did not exit cleanly on SIGTERM"
done
pass "a frozen RSPLIB PE removed by poolflow's keep-alive timers, default and fast"

# ---------------------------------------------------------------------------
# (b) poolflow's collectors (PEs) and exporter (PU) against rspregistrar.
rspregistrar -asap=$RSPLIB:3863 -enrp=$RSPLIB:9901 -loglevel=3 >/tmp/rspregistrar.log 2>&1 &
rspregistrar_pid=$!
# hsdump doubles as a probe of rspregistrar's handlespace.
rsp_handlespace() { timeout 10 hsdump $RSPLIB:9901 >/tmp/rsp-hsdump.out 2>&1; }
wait_until 20 "rspregistrar answers hsdump" rsp_handlespace
alive $rspregistrar_pid || fail "rspregistrar exited"

collector_config() { # INDEX PORT PRIORITY
    cat >/tmp/c$1.toml <<EOF
database = "/tmp/c$1.sqlite"
udp_listen = []
tcp_listen = []
sctp_listen = ["$POOLFLOW:$2"]
[pool]
handle = "billing"
registrars = ["kernel-sctp:$RSPLIB:3863"]
priority = $3
pe_identifier = $((0x100 + $1))
cookie_key = "a shared pool key for the VM"
# RSPLIB's registrar removes a PE after MAX-BAD-PE-REPORT (3) Endpoint
# Unreachable reports, without probing it first. Under software emulation a
# live collector can stall past the exporter's sub-second failure detection
# (seen: 2 to 4 failovers in a stream with one kill) and be reported 3 times;
# a short re-registration interval brings it back within 2 s.
reregistration_interval = "2s"
EOF
}
collector_config 1 9899 2
collector_config 2 9898 1
collector run --config /tmp/c1.toml >/tmp/c1.log 2>&1 &
c1_pid=$!
collector run --config /tmp/c2.toml >/tmp/c2.log 2>&1 &
c2_pid=$!
wait_until 30 "collector 1 registered at rspregistrar" grep -q "ASAP PE registered" /tmp/c1.log
wait_until 30 "collector 2 registered at rspregistrar" grep -q "ASAP PE registered" /tmp/c2.log
two_in_rsplib() { rsp_handlespace && grep -q billing /tmp/rsp-hsdump.out && grep -qi 00000101 /tmp/rsp-hsdump.out && grep -qi 00000102 /tmp/rsp-hsdump.out; }
wait_until 30 "both collectors in rspregistrar's handlespace (hsdump)" two_in_rsplib
cat /tmp/rsp-hsdump.out
pass "poolflow collectors 0x101 and 0x102 registered at rspregistrar (kernel SCTP)"

cat >/tmp/exporter.toml <<EOF
exporter_id = 7
pool_handle = "billing"
registrars = ["kernel-sctp:$RSPLIB:3863"]
state_file = "/tmp/exporter.state"
sequence_reservation = 1000
[timers]
cookie_timeout = "2s"
failback_check = "200ms"
drain_timeout = "5s"
retry_interval = "200ms"
failback_holdoff = "500ms"
connect_timeout = "1s"
cache_lifetime = "500ms"
registrar_request_timeout = "2s"
EOF
exporter stream --config /tmp/exporter.toml --records 2000 --rate 2000 --exit-drain-timeout-secs 60 \
    >/tmp/stream1.out 2>/tmp/stream1.log
stream_status=$?
cat /tmp/stream1.out
[ "$stream_status" = 0 ] || fail "exporter stream (resolved at rspregistrar) exited with $stream_status"
# "sent" counts replays too: under emulation a live collector can stall past
# the exporter's sub-second failure detection, and the records go again.
grep -q "2000 records in, [0-9]* sent, .* all acknowledged" /tmp/stream1.out || fail "stream 1: not all 2000 acknowledged"
pass "exporter resolved the pool at rspregistrar; 2000 records streamed and acknowledged"

# Failover: SIGKILL the collector being streamed to, mid-stream.
exporter stream --config /tmp/exporter.toml --records 20000 --rate 2000 --exit-drain-timeout-secs 60 \
    >/tmp/stream2.out 2>/tmp/stream2.log &
stream_pid=$!
wait_until 30 "stream 2 started" grep -q "streaming to 0x0000010[12]" /tmp/stream2.log
serving=$(sed -n 's/.*streaming to 0x0000010\([12]\).*/\1/p' /tmp/stream2.log | head -1)
eval victim=\$c${serving}_pid
# Some records sent there first.
wait_until 30 "records sent to collector $serving" \
    grep -q "^records in [0-9]*, sent [1-9][0-9]*, .*collector 0x0000010$serving" /tmp/stream2.log
kill -KILL "$victim"
echo "rsplib-vm: SIGKILLed collector $serving (serving the stream)"
wait $stream_pid
stream_status=$?
cat /tmp/stream2.out
[ "$stream_status" = 0 ] || fail "exporter stream with failover exited with $stream_status"
grep -q "20000 records in, .* [1-9][0-9]* failovers, .* all acknowledged" /tmp/stream2.out ||
    fail "stream 2: no failover or not all acknowledged"
pass "SIGKILL of collector $serving: the exporter failed over (via rspregistrar) and all 20000 records were acknowledged"

# The dead collector leaves rspregistrar's handlespace (its keep-alive times out).
killed=$(now_ms)
one_left() { rsp_handlespace && ! grep -qi 0000010$serving /tmp/rsp-hsdump.out; }
wait_until 60 "rspregistrar removed the SIGKILLed collector" one_left
echo "rsplib-vm: rspregistrar removed the SIGKILLed poolflow PE after $(($(now_ms) - killed)) ms (after the stream ended)"

# Failback through rspregistrar: a stream to the survivor; the killed
# collector restarts mid-stream and registers again at rspregistrar. If it
# is the preferred one (priority 2: collector 1), the exporter, polling its
# resolution at rspregistrar, drains the survivor and moves back.
exporter stream --config /tmp/exporter.toml --records 30000 --rate 2000 --exit-drain-timeout-secs 60 \
    >/tmp/stream4.out 2>/tmp/stream4.log &
stream_pid=$!
wait_until 30 "stream 4 started on the survivor" grep -q "streaming to" /tmp/stream4.log
collector run --config /tmp/c$serving.toml >/tmp/c$serving-restarted.log 2>&1 &
eval c${serving}_pid=$!
wait_until 30 "collector $serving registered again at rspregistrar" grep -q "ASAP PE registered" /tmp/c$serving-restarted.log
if [ "$serving" = 1 ]; then
    wait_until 40 "the failback to collector 1 (via rspregistrar's resolution)" grep -q "FAILBACK" /tmp/stream4.log
fi
wait $stream_pid
stream_status=$?
cat /tmp/stream4.out
[ "$stream_status" = 0 ] || fail "exporter stream with failback exited with $stream_status"
grep -q "30000 records in, .* all acknowledged" /tmp/stream4.out || fail "stream 4: not all acknowledged"
if [ "$serving" = 1 ]; then
    grep -q ", [1-9][0-9]* failbacks" /tmp/stream4.out || fail "stream 4: no failback counted"
    pass "collector 1 restarted: the exporter failed back to it (resolved at rspregistrar); all 30000 records acknowledged"
else
    pass "collector $serving restarted (not the preferred one: no failback expected); all 30000 records acknowledged"
fi

for i in 1 2; do
    eval pid=\$c${i}_pid
    kill -TERM "$pid"
    wait "$pid" || fail "collector $i did not exit cleanly on SIGTERM"
done
collector audit --database /tmp/c1.sqlite --database /tmp/c2.sqlite >/tmp/audit.out 2>&1
audit_status=$?
cat /tmp/audit.out
[ "$audit_status" = 0 ] || fail "collector audit exited with $audit_status"
grep -q "VERDICT: PASS" /tmp/audit.out || fail "collector audit: no PASS verdict"
pass "collector audit over both stores: PASS"

# ---------------------------------------------------------------------------
# (c) ENRP between poolflow's registrar and rspregistrar, over kernel SCTP:
# Presence both ways and the handle tables of both in each.
# poolflow's registrar on kernel SCTP with ENRP to the given peers.
enrp_registrar_config() { # FILE PEERS (a TOML list)
    cat >"$1" <<EOT
server_id = 305419896
[listen]
tcp = []
sctp_over_udp = []
kernel_sctp = "$POOLFLOW:3863"
status = "127.0.0.1:3864"
[enrp]
enabled = true
listen = "$POOLFLOW:9901"
advertise = "$POOLFLOW:9901"
transport = "kernel-sctp"
peers = $2
connect_from_listen_port = true
EOT
}
enrp_registrar_config /tmp/registrar-enrp.toml "[\"$RSPLIB:9901\"]"
registrar run --config /tmp/registrar-enrp.toml >/tmp/registrar-enrp.log 2>&1 &
registrar_pid=$!
rsplib_peer_alive() { dump && grep -q "peer 0x[0-9a-f]* 192.0.2.[12]:9901 *alive" /tmp/dump.out; }
wait_until 40 "rspregistrar is an alive ENRP peer of poolflow's registrar" rsplib_peer_alive
poolflow_in_rsplib() { rsp_handlespace && grep -A1 'idx:#[0-9]*: \$12345678' /tmp/rsp-hsdump.out | grep -q "$POOLFLOW} 9901/SCTP"; }
wait_until 40 "poolflow's registrar in rspregistrar's peer list" poolflow_in_rsplib
pass "ENRP Presence both ways: each registrar lists the other as peer"

# One RSPLIB PE homed at each registrar; both handlespaces must hold both.
rspserver -echo -poolhandle=EchoPool -identifier=1432778632 -registrar=$RSPLIB:3863 \
    -local=$RSPLIB -loglevel=3 >/tmp/rspserver-rsplib.log 2>&1 &
rspserver_rsplib=$!
rspserver -echo -poolhandle=EchoPool -identifier=287454037 -registrar=$POOLFLOW:3863 \
    -local=$POOLFLOW -loglevel=3 >/tmp/rspserver-poolflow.log 2>&1 &
rspserver_poolflow=$!
both_in_poolflow() { dump && grep -q "PE 0x55667788" /tmp/dump.out && grep -q "PE 0x11223355" /tmp/dump.out; }
wait_until 60 "poolflow's handlespace holds the PE homed at rspregistrar" both_in_poolflow
both_in_rsplib() { rsp_handlespace && grep -q '\$55667788' /tmp/rsp-hsdump.out && grep -q '\$11223355' /tmp/rsp-hsdump.out; }
wait_until 60 "rspregistrar's handlespace holds the PE homed at poolflow's registrar" both_in_rsplib
pass "handle tables synchronised: both RSPLIB PEs in both registrars' handlespaces"
checksums_equal() {
    dump || return 1
    line=$(grep "peer 0x[0-9a-f]* 192.0.2.[12]:9901" /tmp/dump.out | head -1)
    theirs=$(echo "$line" | sed -n 's/.*checksum theirs \(0x[0-9a-f]*\) ours.*/\1/p')
    ours=$(echo "$line" | sed -n 's/.* ours \(0x[0-9a-f]*\).*/\1/p')
    [ -n "$theirs" ] && [ "$theirs" = "$ours" ]
}
wait_until 60 "equal handlespace checksums for the RSPLIB peer" checksums_equal
grep "peer 0x" /tmp/dump.out
pass "ENRP handlespace checksums equal (poolflow's view of rspregistrar)"

# Takeover, poolflow's way round: rspregistrar SIGKILLed, poolflow's
# registrar takes over the PE homed there. (RSPLIB's way round is not
# asserted: rspregistrar waits for a takeover acknowledgement from every peer
# it knows, hsdump's one-shot "peers" included, so after the hsdump probes
# above its takeover expires; see docs/interop.md.)
kill -KILL $rspregistrar_pid
wait $rspregistrar_pid
killed=$(now_ms)
taken_by_poolflow() { dump && grep "PE 0x55667788" /tmp/dump.out | grep -q "home=0x12345678"; }
wait_until 90 "poolflow's registrar took over PE 0x55667788 from the SIGKILLed rspregistrar" taken_by_poolflow
echo "rsplib-vm: poolflow's registrar took over RSPLIB's PE after $(($(now_ms) - killed)) ms"
grep "PE 0x55667788" /tmp/dump.out
pass "takeover by poolflow's registrar of the PE homed at a SIGKILLed rspregistrar"
# The adopted RSPLIB PE answers the Home Keep Alive (over kernel SCTP, at the
# ASAP transport rspregistrar announced for it) and stays.
adopted_answers() { dump && grep "PE 0x55667788" /tmp/dump.out | grep -q "home=0x12345678 .*ago ur="; }
wait_until 30 "the adopted RSPLIB PE answered poolflow's Home Keep Alive" adopted_answers
grep "PE 0x55667788" /tmp/dump.out
grep -q "keep-alive timeout: PE removed .*0x55667788" /tmp/registrar-enrp.log && fail "the adopted PE was removed"
pass "the adopted RSPLIB PE answered poolflow's Home Keep Alive"
kill -TERM $rspserver_rsplib $rspserver_poolflow
kill -TERM $registrar_pid
wait $registrar_pid || fail "poolflow registrar (ENRP) did not exit cleanly on SIGTERM"

# (c2) Takeover, RSPLIB's way round: an rspregistrar takes over the PE of a
# SIGKILLed poolflow registrar. RSPLIB finishes a takeover only on the last
# Init Takeover Ack from the peers it knows besides the target
# (rspregistrar-takeover.c): with the dead registrar as its only peer it
# waits for an ack that never comes and lets the takeover expire. So two
# rspregistrars peer with poolflow's registrar here; one takes over, the
# other acknowledges. No hsdump may probe them before the takeover starts:
# each hsdump run is one more "peer" that never acknowledges.
enrp_registrar_config /tmp/registrar-enrp3.toml "[\"$RSPLIB:9901\", \"$RSPLIB2:9901\"]"
rspregistrar -identifier=572662306 -asap=$RSPLIB:3863 -enrp=$RSPLIB:9901 \
    -peer=$RSPLIB2:9901 -peer=$POOLFLOW:9901 -loglevel=6 >/tmp/rspregistrar-r1.log 2>&1 &
r1_pid=$!
rspregistrar -identifier=858993459 -asap=$RSPLIB2:3863 -enrp=$RSPLIB2:9901 \
    -peer=$RSPLIB:9901 -peer=$POOLFLOW:9901 -loglevel=6 >/tmp/rspregistrar-r2.log 2>&1 &
r2_pid=$!
registrar run --config /tmp/registrar-enrp3.toml >/tmp/registrar-enrp3.log 2>&1 &
registrar_pid=$!
two_rsplib_peers() {
    dump && grep -q "peer 0x22222222 $RSPLIB:9901 *alive" /tmp/dump.out &&
        grep -q "peer 0x33333333 $RSPLIB2:9901 *alive" /tmp/dump.out
}
wait_until 40 "both rspregistrars alive ENRP peers of poolflow's registrar" two_rsplib_peers
rspserver -echo -poolhandle=EchoPool -identifier=287454054 -registrar=$POOLFLOW:3863 \
    -local=$POOLFLOW -loglevel=3 >/tmp/rspserver-c2.log 2>&1 &
rspserver_c2=$!
pe_c2_registered() { dump && grep -q "PE 0x11223366" /tmp/dump.out; }
wait_until 30 "RSPLIB PE 0x11223366 registered at poolflow's registrar" pe_c2_registered
knows_pe() { grep -q '\$11223366' "$1"; }
wait_until 30 "rspregistrar 0x22222222 learnt PE 0x11223366 over ENRP" knows_pe /tmp/rspregistrar-r1.log
wait_until 30 "rspregistrar 0x33333333 learnt PE 0x11223366 over ENRP" knows_pe /tmp/rspregistrar-r2.log
pass "both rspregistrars hold the PE homed at poolflow's registrar"
kill -KILL $registrar_pid
wait $registrar_pid
killed=$(now_ms)
completed() { grep -q 'Takeover of peer \$12345678 completed' /tmp/rspregistrar-r1.log /tmp/rspregistrar-r2.log; }
wait_until 90 "an rspregistrar completed the takeover of the SIGKILLed poolflow registrar" completed
echo "rsplib-vm: RSPLIB took over poolflow's PE $(($(now_ms) - killed)) ms after the SIGKILL"
grep -h "Takeover of peer\|takeover of dead peer\|acknowledges takeover\|abort our takeover" \
    /tmp/rspregistrar-r1.log /tmp/rspregistrar-r2.log
# The first to find the target dead initiates; the other acknowledges (the
# server ids decide only between two that try at once).
if grep -q 'Takeover of peer \$12345678 completed' /tmp/rspregistrar-r1.log; then
    winner_log=/tmp/rspregistrar-r1.log winner_id=22222222 winner_addr=$RSPLIB
else
    winner_log=/tmp/rspregistrar-r2.log winner_id=33333333 winner_addr=$RSPLIB2
fi
echo "rsplib-vm: rspregistrar \$$winner_id took over"
wait_until 30 "the adopted PE answered rspregistrar $winner_id's keep-alive" \
    grep -q 'Got EndpointKeepAliveAck for pool element \$11223366' $winner_log
timeout 10 hsdump $winner_addr:9901 >/tmp/winner-hsdump.out 2>&1 || fail "hsdump of rspregistrar $winner_id failed"
grep -A1 'idx:#[0-9]*: \$11223366' /tmp/winner-hsdump.out | grep -q "home=\\\$$winner_id" ||
    fail "PE 0x11223366 not homed at $winner_id: $(cat /tmp/winner-hsdump.out)"
pass "takeover by rspregistrar of the PE homed at a SIGKILLed poolflow registrar; the PE answered its new home"
kill -TERM $rspserver_c2 $r1_pid $r2_pid
wait $r1_pid $r2_pid 2>/dev/null

# ---------------------------------------------------------------------------
# (e1) Multicast discovery (issue 13, deliverable 5(e); RFC 5352 section
# 3.6): registrars found from their
# ASAP Server Announces on RSPLIB's default group 239.0.0.50:3863, sent and
# looped back on dummy0 (IP_MULTICAST_LOOP). Multicast is switched on only
# here, so the steps above never depend on it.
ip link set dummy0 multicast on
ip route add 224.0.0.0/4 dev dummy0
cat >/tmp/registrar-announce.toml <<EOT
server_id = 305419896
[listen]
tcp = []
sctp_over_udp = []
kernel_sctp = "$POOLFLOW:3863"
status = "127.0.0.1:3864"
[announce]
enabled = true
addresses = ["239.0.0.50:3863"]
transports = ["sctp:$POOLFLOW:3863"]
EOT
registrar run --config /tmp/registrar-announce.toml >/tmp/registrar-announce.log 2>&1 &
registrar_pid=$!
wait_until 20 "poolflow registrar (announcing) answers its status endpoint" dump
alive $registrar_pid || fail "poolflow registrar (announcing) exited"
# An RSPLIB PE given no registrar: only the announces can tell it where one is.
started_ms=$(now_ms)
rspserver -echo -poolhandle=AnnouncePool -identifier=287454039 -asapannounce=239.0.0.50:3863 \
    -local=$POOLFLOW -loglevel=3 >/tmp/rspserver-announce.log 2>&1 &
rspserver_announce=$!
found_by_announce() { dump && grep -q 'pool "AnnouncePool"' /tmp/dump.out && grep -q "PE 0x11223357" /tmp/dump.out; }
wait_until 30 "RSPLIB PE without -registrar registered at poolflow's registrar found from its Server Announces" found_by_announce
echo "rsplib-vm: RSPLIB PE found poolflow's registrar by announce and registered in $(($(now_ms) - started_ms)) ms"
grep "PE 0x11223357" /tmp/dump.out
pass "RSPLIB PE (rspserver, no -registrar) found poolflow's registrar from its Server Announces and registered"
kill -TERM $rspserver_announce
# poolflow's registrar stops, so only rspregistrar announces from here on.
kill -TERM $registrar_pid
wait $registrar_pid || fail "poolflow registrar (announcing) did not exit cleanly on SIGTERM"

# rspregistrar's Server Announce lists no transport, so a listener reaches
# it at the announce's source address. The kernel picks that address itself:
# dummy0's first, 192.0.2.1, whatever the route's `src` says (seen). So
# rspregistrar is multi-homed on both addresses here, as a registrar that
# announces that way must listen where its announces come from.
rspregistrar -asap=$RSPLIB:3863,$POOLFLOW -enrp=$RSPLIB:9901 -asapannounce=239.0.0.50:3863 -loglevel=3 \
    >/tmp/rspregistrar-announce.log 2>&1 &
rspregistrar_pid=$!
wait_until 20 "rspregistrar (announcing) answers hsdump" rsp_handlespace
# A collector and an exporter with no registrar configured, only the
# announce group: rspregistrar is reached over the kernel's SCTP.
cat >/tmp/c3.toml <<EOF
database = "/tmp/c3.sqlite"
udp_listen = []
tcp_listen = []
sctp_listen = ["$POOLFLOW:9897"]
[pool]
handle = "discovered"
registrars = []
announce_listen = "239.0.0.50:3863"
announce_sctp = "kernel-sctp"
pe_identifier = $((0x103))
cookie_key = "a shared pool key for the VM"
EOF
started_ms=$(now_ms)
collector run --config /tmp/c3.toml >/tmp/c3.log 2>&1 &
c3_pid=$!
wait_until 30 "collector with only announce_listen registered" grep -q "ASAP PE registered" /tmp/c3.log
echo "rsplib-vm: collector found rspregistrar by announce and registered in $(($(now_ms) - started_ms)) ms"
grep "registrar learnt from its Server Announce" /tmp/c3.log || fail "collector 3 did not log the announced registrar"
c3_in_rsplib() { rsp_handlespace && grep -q discovered /tmp/rsp-hsdump.out && grep -qi 00000103 /tmp/rsp-hsdump.out; }
wait_until 30 "collector 3 in rspregistrar's handlespace (hsdump)" c3_in_rsplib
pass "poolflow collector with only announce_listen registered at rspregistrar found from its Server Announces"
cat >/tmp/exporter3.toml <<EOF
exporter_id = 8
pool_handle = "discovered"
registrars = []
announce_listen = "239.0.0.50:3863"
announce_sctp = "kernel-sctp"
state_file = "/tmp/exporter3.state"
sequence_reservation = 1000
[timers]
cookie_timeout = "2s"
retry_interval = "200ms"
connect_timeout = "1s"
cache_lifetime = "500ms"
registrar_request_timeout = "2s"
EOF
exporter stream --config /tmp/exporter3.toml --records 500 --rate 1000 --exit-drain-timeout-secs 60 \
    >/tmp/stream3.out 2>/tmp/stream3.log
stream_status=$?
cat /tmp/stream3.out
[ "$stream_status" = 0 ] || fail "exporter stream (announce_listen only) exited with $stream_status"
grep -q "500 records in, [0-9]* sent, .* all acknowledged" /tmp/stream3.out || fail "stream 3: not all 500 acknowledged"
pass "exporter with only announce_listen resolved the pool at rspregistrar; 500 records acknowledged"
kill -TERM $c3_pid
wait $c3_pid || fail "collector 3 did not exit cleanly on SIGTERM"
kill -KILL $rspregistrar_pid
wait $rspregistrar_pid

# (e2) ENRP peering found by multicast Presence (RFC 5353; RSPLIB's
# -enrpannounce=): neither registrar is told of the other; each sends its
# Presence to 239.0.0.51:9901 and peers with the registrar it hears there.
cat >/tmp/registrar-enrp-multicast.toml <<EOT
server_id = 305419896
[listen]
tcp = []
sctp_over_udp = []
kernel_sctp = "$POOLFLOW:3863"
status = "127.0.0.1:3864"
[enrp]
enabled = true
listen = "$POOLFLOW:9901"
advertise = "$POOLFLOW:9901"
transport = "kernel-sctp"
peers = []
connect_from_listen_port = true
multicast = true
multicast_address = "239.0.0.51:9901"
EOT
registrar run --config /tmp/registrar-enrp-multicast.toml >/tmp/registrar-enrp-multicast.log 2>&1 &
registrar_pid=$!
wait_until 20 "poolflow registrar (ENRP multicast) answers its status endpoint" dump
rspregistrar -asap=$RSPLIB:3863 -enrp=$RSPLIB:9901 -enrpannounce=239.0.0.51:9901 -loglevel=3 \
    >/tmp/rspregistrar-enrp-multicast.log 2>&1 &
rspregistrar_pid=$!
started_ms=$(now_ms)
wait_until 40 "rspregistrar, heard on the ENRP group, is an alive ENRP peer of poolflow's registrar" rsplib_peer_alive
echo "rsplib-vm: ENRP peering by multicast Presence up in $(($(now_ms) - started_ms)) ms"
# Who found whom first is a race: rspregistrar, hearing our Presence during
# its start-up, usually contacts us before its own first multicast Presence
# (about 2.4 s after start) reaches us. Either way, our side must also hear
# and accept its multicast Presence.
if grep -q "learned ENRP peer from its multicast Presence" /tmp/registrar-enrp-multicast.log; then
    echo "rsplib-vm: poolflow's registrar learnt rspregistrar from its multicast Presence"
else
    echo "rsplib-vm: rspregistrar learnt poolflow's registrar from its multicast Presence and contacted it first"
fi
heard_rsplib_multicast() { dump && grep -q "ENRP multicast: [1-9][0-9]* Presence(s) heard" /tmp/dump.out; }
wait_until 20 "poolflow's registrar heard rspregistrar's multicast Presence" heard_rsplib_multicast
wait_until 40 "poolflow's registrar in rspregistrar's peer list (multicast)" poolflow_in_rsplib
grep "peer 0x\|ENRP multicast" /tmp/dump.out
pass "ENRP peering of poolflow's registrar and rspregistrar found by multicast Presence, no peer configured"
kill -TERM $rspregistrar_pid
kill -TERM $registrar_pid
wait $registrar_pid || fail "poolflow registrar (ENRP multicast) did not exit cleanly on SIGTERM"

# ---------------------------------------------------------------------------
# (d) poolflow's user-space SCTP over UDP against the kernel's SCTP over UDP
# (RFC 6951; Linux's net.sctp.udp_port and encap_port), with RSPLIB on the
# kernel side, both ways. The kernel takes encapsulated SCTP on UDP 9899.
echo 9899 >/proc/sys/net/sctp/udp_port || fail "net.sctp.udp_port not settable"

# (d1) RSPLIB's PE on kernel SCTP in UDP -> poolflow's registrar on
# user-space SCTP over UDP (UDP 9898, SCTP port 3863). encap_port sends every
# kernel SCTP packet to that UDP port; our stack answers to the kernel's
# source port (9899) and learns it (RFC 6951 section 5.4).
echo 9898 >/proc/sys/net/sctp/encap_port || fail "net.sctp.encap_port not settable"
registrar run --server-id 305419897 --sctp-over-udp $POOLFLOW:9898 --sctp-port 3863 --no-tcp \
    >/tmp/registrar-udp.log 2>&1 &
registrar_pid=$!
wait_until 20 "poolflow registrar (SCTP over UDP) answers its status endpoint" dump
rspserver -echo -poolhandle=UdpPool -identifier=287454021 -registrar=$POOLFLOW:3863 \
    -local=$POOLFLOW -loglevel=3 >/tmp/rspserver-udp.log 2>&1 &
rspserver_pid=$!
wait_until 30 "RSPLIB PE on kernel SCTP over UDP registered at poolflow's registrar" pes_are 1
grep -q "PE 0x11223345" /tmp/dump.out || fail "PE 0x11223345 missing: $(cat /tmp/dump.out)"
pass "RSPLIB PE 0x11223345 (kernel SCTP in UDP) registered at poolflow's registrar (user-space SCTP over UDP)"
keep_alive_answered_udp() {
    dump && grep -q "keep_alives_sent=[1-9]" /tmp/dump.out &&
        grep -q "keep_alive_failures=0 " /tmp/dump.out &&
        grep "PE 0x11223345" /tmp/dump.out | grep -vq "keep-alive pending"
}
wait_until 30 "a keep-alive over SCTP over UDP answered by RSPLIB's PE" keep_alive_answered_udp
pass "poolflow's Endpoint Keep-Alive over SCTP over UDP answered by RSPLIB's PE on the kernel"
kill -KILL $rspserver_pid
kill -TERM $registrar_pid
wait $registrar_pid || fail "poolflow registrar (SCTP over UDP) did not exit cleanly on SIGTERM"

# (d2) poolflow's collector on user-space SCTP over UDP -> rspregistrar on
# kernel SCTP, reached in UDP at the kernel's 9899 (`sctp:HOST:3863/udp=9899`).
# encap_port back to 0: the kernel encapsulates toward a peer only because
# that peer's packets came encapsulated, to the port they came from.
echo 0 >/proc/sys/net/sctp/encap_port
rspregistrar -asap=$RSPLIB:3863 -enrp=$RSPLIB:9901 -loglevel=3 >/tmp/rspregistrar-udp.log 2>&1 &
rspregistrar_pid=$!
wait_until 20 "rspregistrar answers hsdump" rsp_handlespace
cat >/tmp/c4.toml <<EOT
database = "/tmp/c4.sqlite"
udp_listen = []
tcp_listen = []
sctp_listen = ["$POOLFLOW:9897"]
[pool]
handle = "billing-udp"
registrars = ["sctp:$RSPLIB:3863/udp=9899"]
pe_identifier = $((0x104))
cookie_key = "a shared pool key for the VM"
EOT
RUST_LOG=info,asap_client::pool_element=debug collector run --config /tmp/c4.toml >/tmp/c4.log 2>&1 &
c4_pid=$!
wait_until 30 "collector 4 (SCTP over UDP) registered at rspregistrar" grep -q "ASAP PE registered" /tmp/c4.log
c4_in_rsplib() { rsp_handlespace && grep -q billing-udp /tmp/rsp-hsdump.out && grep -qi 00000104 /tmp/rsp-hsdump.out; }
wait_until 30 "collector 4 in rspregistrar's handlespace (hsdump)" c4_in_rsplib
pass "poolflow collector 0x104 (user-space SCTP over UDP) registered at rspregistrar (kernel SCTP in UDP 9899)"
# RSPLIB's keep-alives reach it over the same association and are answered.
two_keep_alives() { [ "$(grep -c "Endpoint Keep Alive answered" /tmp/c4.log)" -ge 2 ]; }
wait_until 40 "two of rspregistrar's keep-alives answered by collector 4" two_keep_alives
alive $c4_pid || fail "collector 4 exited"
c4_in_rsplib || fail "collector 4 left rspregistrar's handlespace after answering its keep-alives"
pass "collector 4 answered rspregistrar's keep-alives over SCTP over UDP and stayed registered"
kill -TERM $c4_pid
wait $c4_pid || fail "collector 4 did not exit cleanly on SIGTERM"
kill -TERM $rspregistrar_pid
echo 0 >/proc/sys/net/sctp/udp_port

echo "rsplib-vm: all guest steps passed"
finish 0
