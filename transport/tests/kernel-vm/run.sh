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

. transport/tests/kernel-vm/lib.sh
kvm_prepare

# --- the test binary (built for this host; its shared libraries go along).
binary=$(cargo test -p transport --test kernel_sctp --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kernel_sctp":
        print(m["executable"])')
[ -x "$binary" ] || { echo "kernel-vm: test binary not built" >&2; exit 1; }

# --- initramfs
kvm_new_root sh mount insmod ip poweroff cat echo sysctl sleep
kvm_add_binary "$binary" /bin/kernel_sctp
cat >"$work/init-kernel-sctp" <<'EOF'
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
kvm_pack "$work/init-kernel-sctp"

# --- boot
log="$work/console.log"
kvm_boot "$log"
if [ -z "$status" ]; then
    echo "kernel-vm: the VM reported no test result (console log: $log)" >&2
    exit 1
fi
exit "$status"
