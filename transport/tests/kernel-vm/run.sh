#!/usr/bin/env bash
# Runs transport/tests/kernel_sctp.rs against a real Linux kernel SCTP stack
# inside a throw-away virtual machine, for hosts (containers, this CI) whose
# own kernel has no SCTP: Debian's kernel (sctp.ko), busybox and the test
# binary in an initramfs, booted by QEMU (KVM when /dev/kvm works, else
# software emulation). The kernel is a peer nobody here wrote: our native
# SCTP code talks to it over loopback inside the VM, and with
# POOLFLOW_KERNEL_SCTP_VM=1 the tests also run the kernel's own SCTP over
# UDP (RFC 6951) against our user-space SCTP-over-UDP endpoint.
#
#   transport/tests/kernel-vm/run.sh            # installs what it needs (root + apt)
#
# Exit status: the test binary's, 1 if the VM did not report one.
set -euo pipefail
cd "$(dirname "$0")/../../.."

work=${KERNEL_VM_DIR:-target/kernel-vm}
mkdir -p "$work"
work=$(cd "$work" && pwd)

# --- what it needs: QEMU (installed), a Debian kernel and busybox (unpacked
# into $work, not installed: no boot loader or initramfs hooks run).
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v cpio >/dev/null; then
    echo "kernel-vm: installing qemu-system-x86 and cpio" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 cpio >/dev/null
fi
if [ ! -d "$work/kernel/boot" ] || [ ! -x "$work/busybox/bin/busybox" ]; then
    (
        cd "$work"
        [ -n "$(ls /var/lib/apt/lists/*Packages 2>/dev/null | head -1)" ] || apt-get update -qq
        # The metapackage names the current kernel package.
        image=$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1)
        [ -n "$image" ] || { echo "kernel-vm: no Debian kernel package found" >&2; exit 1; }
        rm -f ./*.deb
        apt-get download "$image" busybox-static 2>/dev/null
        rm -rf kernel busybox
        dpkg-deb -x linux-image-*.deb kernel
        dpkg-deb -x busybox-static_*.deb busybox
        rm -f ./*.deb
    )
fi
vmlinuz=$(ls "$work"/kernel/boot/vmlinuz-* | head -1)
modules=$(ls -d "$work"/kernel/lib/modules/* | head -1)

# --- the test binary (built for this host; its shared libraries go along).
binary=$(cargo test -p transport --test kernel_sctp --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kernel_sctp":
        print(m["executable"])')
[ -x "$binary" ] || { echo "kernel-vm: test binary not built" >&2; exit 1; }

# --- initramfs
root="$work/root"
rm -rf "$root"
mkdir -p "$root"/{bin,proc,sys,dev,tmp,lib/modules}
cp "$work/busybox/bin/busybox" "$root/bin/"
for tool in sh mount insmod ip poweroff cat echo sysctl sleep; do
    ln -s busybox "$root/bin/$tool"
done
# sctp.ko and what it depends on (the modinfo "depends=" lists), in load order.
for module in crypto/crc32c_generic lib/libcrc32c net/ipv4/udp_tunnel net/ipv6/ip6_udp_tunnel net/sctp/sctp; do
    cp "$modules/kernel/$module.ko" "$root/lib/modules/"
done
cp "$binary" "$root/bin/kernel_sctp"
# The dynamic loader and libraries, at the paths the binary asks for.
ldd "$binary" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cat >"$root/init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in crc32c_generic libcrc32c udp_tunnel ip6_udp_tunnel sctp; do
    # A failed insmod is reported here and then fails every test, which
    # panics without kernel SCTP inside the VM (kernel_sctp_or_skip).
    insmod /lib/modules/$m.ko || echo "kernel-vm: insmod $m failed"
done
ip link set lo up
echo "kernel-vm: $(cat /proc/version)"
cd /tmp
POOLFLOW_KERNEL_SCTP_VM=1 RUST_BACKTRACE=1 /bin/kernel_sctp --test-threads=1
echo "kernel-vm: exit $?"
poweroff -f
EOF
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.gz"

# --- boot
# Software emulation (TCG): KVM inside this kind of sandbox (nested) fails
# at CPU setup or hangs in the BIOS; the whole run takes seconds anyway.
accel=(-machine accel=tcg -cpu max)
log="$work/console.log"
boot() {
    echo "kernel-vm: booting $(basename "$vmlinuz") with ${accel[*]}" >&2
    timeout 600 qemu-system-x86_64 "${accel[@]}" -m 1024 -smp 2 -nographic -no-reboot \
        -kernel "$vmlinuz" -initrd "$work/initramfs.gz" \
        -append "console=ttyS0 panic=-1 quiet" </dev/null | tee "$log" | tr -d '\r' | grep -v '^\s*$' || true
}

# Debian 12's 6.1 kernel sometimes dies in its own SCTP-over-UDP receive path
# (`kernel BUG at mm/slub.c:419`, a double free under sctp_udp_rcv ->
# sctp_rcv) while the interop test runs: a guest kernel bug, not a test
# verdict. Such a crash is reported and the VM booted once more; a test
# failure, or a second crash, fails the run.
for attempt in 1 2; do
    boot
    status=$(tr -d '\r' <"$log" | sed -n 's/^kernel-vm: exit \([0-9]*\)$/\1/p' | tail -1)
    [ -n "$status" ] && break
    crash=$(tr -d '\r' <"$log" | grep -m1 -E 'kernel BUG|Oops|Kernel panic' || true)
    if [ -n "$crash" ] && [ "$attempt" = 1 ]; then
        echo "kernel-vm: the guest kernel crashed ($crash); booting again" >&2
        cp "$log" "$work/console-crash.log"
        continue
    fi
    break
done
if [ -z "$status" ]; then
    echo "kernel-vm: the VM reported no test result (console log: $log)" >&2
    exit 1
fi
exit "$status"
