#!/usr/bin/env bash
# Interop with RSPLIB, the RSerPool reference implementation, as Debian
# ships it (rsplib-registrar, rsplib-tools 3.4.4, built on the kernel's SCTP
# through libsctp1), inside the throw-away kernel-SCTP VM of run.sh (issue
# 13, deliverable 5). The guest script, rsplib-guest.sh, runs:
#   (a) RSPLIB's PE (rspserver -echo), PU (rspterminal) and hsdump against
#       poolflow's registrar (ASAP and ENRP over kernel SCTP);
#   (b) two poolflow collectors (PEs) and `exporter stream` (PU) against
#       RSPLIB's rspregistrar: registration, resolution, a billing stream
#       acknowledged and audited, SIGKILL of the serving collector with
#       failover to the other, and its restart with failback to it;
#   (c) ENRP between poolflow's registrar and rspregistrar, and takeover
#       both ways (c2: two rspregistrars, one takes over the PE of a
#       SIGKILLed poolflow registrar);
#   (d) poolflow's user-space SCTP over UDP against the kernel's SCTP over
#       UDP (net.sctp.udp_port) with RSPLIB on the kernel side, both ways:
#       an RSPLIB PE registering at poolflow's registrar, and a poolflow
#       collector registering at rspregistrar and answering its keep-alives;
#   (e1) multicast discovery: an rspserver without -registrar finds poolflow's
#       registrar from its Server Announces, and a poolflow collector and
#       exporter with only `announce_listen` find rspregistrar from its.
#   (e2) ENRP peering of poolflow's registrar and rspregistrar found by
#       their multicast Presence alone.
# Every step asserts; the first failure ends the run with "rsplib-vm: FAIL".
# A packet capture of the whole run (tcpdump on lo in the guest) comes back
# as $work/rsplib.pcap and must decode in tshark without a malformed packet.
#
#   transport/tests/kernel-vm/rsplib.sh        # installs what it needs (root + apt)
#
# The .debs are downloaded into target/kernel-vm/rsplib (never committed).
# Exit status: 0 when the guest reported every step passed, else 1.
set -euo pipefail
cd "$(dirname "$0")/../../.."

. transport/tests/kernel-vm/lib.sh
kvm_prepare
started=$(date +%s)

# --- RSPLIB and tcpdump from Debian, unpacked (not installed).
debs="$work/rsplib"
packages=(rsplib-registrar rsplib-tools librsplib3 libcpprspserver3 libsctp1 tcpdump libpcap0.8)
if [ ! -x "$debs/x/usr/bin/rspregistrar" ] || [ ! -x "$debs/x/usr/bin/tcpdump" ]; then
    mkdir -p "$debs"
    (
        cd "$debs"
        kvm_apt_lists
        rm -rf ./*.deb x
        # A missing package is a failure: CI must never skip this test.
        apt-get download "${packages[@]}" 2>/dev/null ||
            { echo "rsplib-vm: apt-get download ${packages[*]} failed" >&2; exit 1; }
        for deb in ./*.deb; do dpkg-deb -x "$deb" x; done
        rm -f ./*.deb
    )
fi
rsplibs="$debs/x/usr/lib/x86_64-linux-gnu"

# --- poolflow's daemons (debug build unless POOLFLOW_BIN_DIR names others).
bindir=${POOLFLOW_BIN_DIR:-}
if [ -z "$bindir" ]; then
    cargo build --locked -q -p registrar -p collector -p exporter
    bindir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug
fi

# --- initramfs: busybox (every applet, linked at boot), sctp.ko and dummy.ko.
KVM_EXTRA_MODULES=drivers/net/dummy kvm_new_root sh
for tool in rspregistrar rspserver rspterminal hsdump; do
    kvm_add_binary "$debs/x/usr/bin/$tool" "/usr/bin/$tool" "$rsplibs"
done
kvm_add_binary "$debs/x/usr/bin/tcpdump" /usr/bin/tcpdump "$rsplibs"
for daemon in registrar collector exporter; do
    # Debug info stripped where binutils is at hand: the initramfs lives in
    # the guest's memory (2 GiB hold the unstripped ones too).
    if command -v strip >/dev/null; then
        strip --strip-debug -o "$work/$daemon.stripped" "$bindir/$daemon"
    else
        cp "$bindir/$daemon" "$work/$daemon.stripped"
    fi
    kvm_add_binary "$work/$daemon.stripped" "/usr/bin/$daemon"
done
kvm_pack transport/tests/kernel-vm/rsplib-guest.sh

# --- boot: console to the log, the capture (base64) on the second serial port.
log="$work/rsplib-console.log"
capture="$work/rsplib-capture.b64"
rm -f "$capture" "$work/rsplib.pcap"
KVM_MEMORY=2048 kvm_boot "$log" -serial mon:stdio -serial "file:$capture"
elapsed=$(($(date +%s) - started))
if [ -z "$status" ]; then
    echo "rsplib-vm: FAIL: the VM reported no result (console log: $log)" >&2
    exit 1
fi
if [ "$status" != 0 ]; then
    echo "rsplib-vm: FAIL: the guest reported failure (exit $status; console log: $log)" >&2
    exit 1
fi

# --- the capture: present, and nothing in it malformed.
tr -d '\r' <"$capture" | base64 -d >"$work/rsplib.pcap" ||
    { echo "rsplib-vm: FAIL: the packet capture did not come back whole" >&2; exit 1; }
if command -v tshark >/dev/null; then
    # Every UDP port the guest's SCTP over UDP uses (collectors 9899, 9898,
    # 9897; the kernel's and our registrar's 9899, 9898), decoded as SCTP;
    # and no RTCP guessing: an ephemeral source port such as 0x80cc reads as
    # an RTCP header, which an undecoded port once turned into "malformed".
    # Nor protocols Wireshark decodes by an SCTP port inside Linux's
    # ephemeral range (32768-60999: S1AP, X2AP, NGAP, E2AP, ...): an
    # association whose ephemeral port was one of them had its IPFIX (PPID
    # 0, decoded by port) read as that protocol and "malformed" (E2AP on
    # 37464, one CI run in many). Listed from this tshark, one flag each.
    ephemeral_port_protocols=()
    for protocol in $(tshark -G decodes 2>/dev/null |
        awk -F'\t' '$1 == "sctp.port" && $2 >= 32768 && $2 <= 60999 { print $3 }' | sort -u); do
        ephemeral_port_protocols+=(--disable-protocol "$protocol")
    done
    decode=(tshark -r "$work/rsplib.pcap" --disable-heuristic rtcp_udp "${ephemeral_port_protocols[@]}"
        -d udp.port==9899,sctp -d udp.port==9898,sctp -d udp.port==9897,sctp)
    frames=$("${decode[@]}" 2>/dev/null | wc -l)
    [ "$frames" -gt 100 ] || { echo "rsplib-vm: FAIL: the capture holds only $frames frames" >&2; exit 1; }
    asap=$("${decode[@]}" -Y asap 2>/dev/null | wc -l)
    enrp=$("${decode[@]}" -Y enrp 2>/dev/null | wc -l)
    [ "$asap" -gt 0 ] && [ "$enrp" -gt 0 ] ||
        { echo "rsplib-vm: FAIL: capture without ASAP ($asap) or ENRP ($enrp) frames" >&2; exit 1; }
    malformed=$("${decode[@]}" -Y '_ws.malformed' 2>/dev/null | wc -l)
    if [ "$malformed" != 0 ]; then
        "${decode[@]}" -Y '_ws.malformed' 2>/dev/null | head -20 >&2
        echo "rsplib-vm: FAIL: $malformed malformed frames in $work/rsplib.pcap" >&2
        exit 1
    fi
    echo "rsplib-vm: capture $work/rsplib.pcap: $frames frames ($asap ASAP, $enrp ENRP), none malformed"
elif [ -n "${CI:-}" ]; then
    echo "rsplib-vm: FAIL: tshark missing in CI (tests/run.sh installs it)" >&2
    exit 1
else
    echo "rsplib-vm: note: no tshark here; $work/rsplib.pcap not decoded" >&2
fi
echo "rsplib-vm: all steps passed in ${elapsed} s"
