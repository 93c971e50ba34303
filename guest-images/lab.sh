#!/usr/bin/env bash
# Builds the hardware-KVM lab kit (see tests/common/lab.rs): QEMU's emulator
# with AMD-V runs a Debian kernel as the lab's host (L1), where kvm_amd gives
# an ordinary /dev/kvm, and rvmm runs its Linux guests (L2) inside it.
#   vmlinuz                 Debian's distribution kernel: L1's kernel, and a guest kernel
#   vmlinux                 the same kernel as an ELF (with its PVH note), for the lab
#                           benchmark, where every VMM boots it (Firecracker boots no bzImage)
#   l1.cpio                 L1's initramfs: busybox, lab/l1-init, the KVM modules
#   debian-initramfs.cpio   initramfs for Debian's kernel as a guest: busybox, virtio and
#                           vsock modules, lab/vsock.c, lab/tcpbench.c and lab/blkbench.c (built here, static)
# Installs qemu-system-x86; takes the kernel from Debian's linux-image-amd64
# with `apt-get download` (the host's /boot is not touched). Cached by a hash
# of the inputs in $RVMM_CACHE_DIR. Prints the cache directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

ensure_packages qemu-system-x86:/usr/bin/qemu-system-x86_64 busybox-static:/bin/busybox cpio:/bin/cpio \
    gcc:/usr/bin/gcc libc6-dev:/usr/lib/x86_64-linux-gnu/libc.a xz-utils:/usr/bin/xz

# The versioned package behind linux-image-amd64, e.g. linux-image-6.1.0-56-amd64.
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
package="$(kernel_package)"
if [ -z "$package" ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq || die "apt-get update failed; check the network to the Debian mirror"
    package="$(kernel_package)"
fi
[ -n "$package" ] || die "Debian's linux-image-amd64 names no kernel package; is this Debian 12?"
package_version="$(apt-cache show "$package" | awk '/^Version:/ { print $2; exit }')"
busybox_version="$(dpkg-query -W -f='${Version}' busybox-static)"
# Bump when a change to this script changes what it builds (not for messages).
recipe=5
gcc_version="$(dpkg-query -W -f='${Version}' gcc libc6-dev | tr '\n' ' ')"
hash="$(inputs_hash "$here/lab/l1-init" "$here/lab/debian-init" "$here/initramfs/stop-signals" "$here/lab/vsock.c" "$here/lab/tcpbench.c" "$here/lab/blkbench.c" \
    "$package=$package_version" "busybox-static=$busybox_version" "gcc=$gcc_version" "recipe=$recipe")"
dest="$RVMM_CACHE_DIR/lab-$hash"
cached lab "$dest" vmlinuz vmlinux l1.cpio debian-initramfs.cpio && exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "lab: downloading $package $package_version"
(cd "$work" && apt-get download -q "$package=$package_version" >/dev/null 2>&1) \
    || die "apt-get download $package failed; check the network to the Debian mirror"
dpkg-deb -x "$work"/*.deb "$work/pkg"
version="${package#linux-image-}"
modules="$work/pkg/lib/modules/$version/kernel"

# Makes a newc cpio of directory $1 at $2.
make_cpio() {
    (cd "$1" && find . -print0 | LC_ALL=C sort -z | cpio --null --reproducible -o -H newc --owner=0:0 --quiet) > "$2"
}
# Fills directory $1 with busybox, /init from $2 and a console node.
busybox_root() {
    mkdir -p "$1"/{bin,dev,proc,sys,tmp}
    cp /bin/busybox "$1/bin/busybox"
    install -m 0755 "$2" "$1/init"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" mknod -m 600 "$1/dev/console" c 5 1
}

mkdir -p "$dest.tmp"
cp "$work/pkg/boot/vmlinuz-$version" "$dest.tmp/vmlinuz"
# Debian's bzImage carries its kernel xz-compressed: unpack the stream that
# starts at the xz magic (xz complains of what follows it, which is not xz).
offset="$(LC_ALL=C grep -abo $'\xfd''7zXZ' "$dest.tmp/vmlinuz" | head -n 1 | cut -d: -f1)"
[ -n "$offset" ] || die "no xz stream in $package's vmlinuz"
tail -c +$((offset + 1)) "$dest.tmp/vmlinuz" | xz -dc > "$dest.tmp/vmlinux" 2>/dev/null || true
[ "$(head -c 4 "$dest.tmp/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] \
    || die "the kernel unpacked from $package's vmlinuz is not an ELF"

l1="$work/l1"
busybox_root "$l1" "$here/lab/l1-init"
mkdir -p "$l1/lab/modules"
cp "$modules/virt/lib/irqbypass.ko" "$modules/drivers/crypto/ccp/ccp.ko" \
    "$modules/arch/x86/kvm/kvm.ko" "$modules/arch/x86/kvm/kvm-amd.ko" \
    "$modules/drivers/net/tun.ko" "$l1/lab/modules/"
make_cpio "$l1" "$dest.tmp/l1.cpio"

guest="$work/debian-guest"
busybox_root "$guest" "$here/lab/debian-init"
install -D -m 0644 "$here/initramfs/stop-signals" "$guest/etc/stop-signals"
mkdir -p "$guest/modules"
cp "$modules/drivers/virtio/virtio_ring.ko" "$modules/drivers/virtio/virtio.ko" \
    "$modules/drivers/virtio/virtio_mmio.ko" "$modules/drivers/block/virtio_blk.ko" \
    "$modules/net/core/failover.ko" "$modules/drivers/net/net_failover.ko" \
    "$modules/drivers/net/virtio_net.ko" "$modules/net/vmw_vsock/vsock.ko" \
    "$modules/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko" \
    "$modules/net/vmw_vsock/vmw_vsock_virtio_transport.ko" "$guest/modules/"
for tool in vsock tcpbench blkbench; do
    gcc -static -O2 -Wall -Werror -o "$guest/bin/$tool" "$here/lab/$tool.c" \
        || die "could not build lab/$tool.c (needs gcc and libc6-dev)"
done
make_cpio "$guest" "$dest.tmp/debian-initramfs.cpio"
echo "$package $package_version" > "$dest.tmp/VERSION"
publish lab "$dest"
