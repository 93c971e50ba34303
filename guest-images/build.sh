#!/usr/bin/env bash
# Builds everything a guest needs and puts it in guest-images/out/:
#   bzImage, vmlinux      the guest kernel (kernel.sh)
#   initramfs.cpio        busybox initramfs (initramfs.sh)
#   rootfs.ext4           the same busybox tree on ext4, for root=/dev/vda (rootfs.sh)
# Results are cached by a hash of their inputs in ${RVMM_CACHE_DIR:-~/.cache/rvmm},
# so a second run, or a fresh clone on the same machine, takes seconds.
# Prints the paths of the outputs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

kernel_dir="$("$here/kernel.sh")"
initramfs_dir="$("$here/initramfs.sh")"
rootfs_dir="$("$here/rootfs.sh")"

out="$here/out"
mkdir -p "$out"
cp -f "$kernel_dir/bzImage" "$kernel_dir/vmlinux" "$initramfs_dir/initramfs.cpio" "$rootfs_dir/rootfs.ext4" "$out/"
for f in bzImage vmlinux initramfs.cpio rootfs.ext4; do
    echo "$out/$f"
done
