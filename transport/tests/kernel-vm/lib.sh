# Shared by the kernel-VM scripts (run.sh: transport/tests/kernel_sctp.rs;
# rsplib.sh: interop with Debian's RSPLIB): fetch Debian's kernel and
# busybox, build an initramfs with chosen binaries and their shared
# libraries, boot it under QEMU and read the result the guest printed.
# Sourced, not run; expects `set -euo pipefail` and the repository root as
# the current directory.

# kvm_prepare: sets $work (KERNEL_VM_DIR, default target/kernel-vm), installs
# QEMU and cpio when missing (root + apt), unpacks a Debian kernel and busybox
# into $work (not installed: no boot loader or initramfs hooks run), and sets
# $vmlinuz and $modules.
kvm_prepare() {
    work=${KERNEL_VM_DIR:-target/kernel-vm}
    mkdir -p "$work"
    work=$(cd "$work" && pwd)
    if ! command -v qemu-system-x86_64 >/dev/null || ! command -v cpio >/dev/null; then
        echo "kernel-vm: installing qemu-system-x86 and cpio" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 cpio >/dev/null
    fi
    if [ ! -d "$work/kernel/boot" ] || [ ! -x "$work/busybox/bin/busybox" ]; then
        (
            cd "$work"
            kvm_apt_lists
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
}

# Package lists for apt-get download, fetched once if the host has none.
kvm_apt_lists() {
    [ -n "$(ls /var/lib/apt/lists/*Packages 2>/dev/null | head -1)" ] || apt-get update -qq
}

# kvm_new_root TOOL...: a fresh initramfs tree in $root with busybox (the
# named applets linked) and sctp.ko with what it depends on; more modules
# (paths under kernel/, without .ko) in $KVM_EXTRA_MODULES.
kvm_new_root() {
    root="$work/root"
    rm -rf "$root"
    mkdir -p "$root"/{bin,proc,sys,dev,tmp,lib/modules}
    cp "$work/busybox/bin/busybox" "$root/bin/"
    for tool in "$@"; do
        ln -s busybox "$root/bin/$tool"
    done
    # sctp.ko and what it depends on (the modinfo "depends=" lists), in load order.
    for module in crypto/crc32c_generic lib/libcrc32c net/ipv4/udp_tunnel net/ipv6/ip6_udp_tunnel net/sctp/sctp ${KVM_EXTRA_MODULES:-}; do
        cp "$modules/kernel/$module.ko" "$root/lib/modules/"
    done
}

# kvm_add_binary SRC DEST [LIBDIR]: copies an executable into $root at DEST
# and the dynamic loader and libraries it needs at the paths it asks for
# (LIBDIR: extra directory searched first, for unpacked packages' libraries).
kvm_add_binary() {
    local src=$1 dest=$2 libdir=${3:-}
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$src" "$root$dest"
    local missing
    missing=$(LD_LIBRARY_PATH=$libdir ldd "$src" | grep 'not found' || true)
    [ -z "$missing" ] || { echo "kernel-vm: $src: libraries not found: $missing" >&2; return 1; }
    LD_LIBRARY_PATH=$libdir ldd "$src" | grep -o '/[^ ]*' | while read -r lib; do
        # A library from LIBDIR goes to the standard directory (the guest
        # has no LD_LIBRARY_PATH of ours).
        local target=$lib
        if [ -n "$libdir" ]; then
            case "$lib" in "$libdir"/*) target=/usr/lib/x86_64-linux-gnu/$(basename "$lib") ;; esac
        fi
        [ -e "$root$target" ] && continue
        mkdir -p "$root$(dirname "$target")"
        cp -L "$lib" "$root$target"
    done
}

# kvm_pack INIT: installs INIT (a file) as /init and packs $root into
# $work/initramfs.gz.
kvm_pack() {
    cp "$1" "$root/init"
    chmod +x "$root/init"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initramfs.gz"
}

# kvm_boot LOG [QEMU ARGS...]: boots $vmlinuz with $work/initramfs.gz, the
# console to LOG (and, filtered, to stdout); sets $status to the N of the
# guest's last "kernel-vm: exit N" line, empty if it printed none.
#
# Debian 12's 6.1 kernel sometimes dies in its own SCTP-over-UDP receive path
# (`kernel BUG at mm/slub.c:419`, a double free under sctp_udp_rcv ->
# sctp_rcv): a guest kernel bug, not a test verdict. Such a crash is
# reported and the VM booted once more; a second crash leaves $status empty.
kvm_boot() {
    local log=$1
    shift
    # Software emulation (TCG): KVM inside this kind of sandbox (nested) fails
    # at CPU setup or hangs in the BIOS; the runs take seconds to a minute.
    local accel=(-machine accel=tcg -cpu max)
    status=
    for attempt in 1 2; do
        echo "kernel-vm: booting $(basename "$vmlinuz") with ${accel[*]}" >&2
        timeout "${KVM_TIMEOUT:-600}" qemu-system-x86_64 "${accel[@]}" -m "${KVM_MEMORY:-1024}" -smp 2 \
            -nographic -no-reboot -kernel "$vmlinuz" -initrd "$work/initramfs.gz" \
            -append "console=ttyS0 panic=-1 quiet" "$@" </dev/null |
            tee "$log" | tr -d '\r' | grep -v '^\s*$' || true
        status=$(tr -d '\r' <"$log" | sed -n 's/^kernel-vm: exit \([0-9]*\)$/\1/p' | tail -1)
        [ -n "$status" ] && return 0
        local crash
        crash=$(tr -d '\r' <"$log" | grep -m1 -E 'kernel BUG|Oops|Kernel panic' || true)
        if [ -n "$crash" ] && [ "$attempt" = 1 ]; then
            echo "kernel-vm: the guest kernel crashed ($crash); booting again" >&2
            cp "$log" "${log%.log}-crash.log"
            continue
        fi
        return 0
    done
}
