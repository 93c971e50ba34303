#!/usr/bin/env bash
# Builds everything a guest needs and puts it in guest-images/out/:
#   bzImage, vmlinux      the guest kernel (kernel.sh)
#   initramfs.cpio        busybox initramfs (initramfs.sh)
#   rootfs.ext4           the same busybox tree on ext4, for root=/dev/vda (rootfs.sh)
#   lab/                  the hardware-KVM lab: Debian's kernel (bzImage and ELF), L1's and its
#                         guest's initramfs (lab.sh)
# Results are cached by a hash of their inputs in ${RVMM_CACHE_DIR:-~/.cache/rvmm},
# so a second run, or a fresh clone on the same machine, takes seconds.
# Prints the paths of the outputs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

kernel_dir="$("$here/kernel.sh")"
initramfs_dir="$("$here/initramfs.sh")"
rootfs_dir="$("$here/rootfs.sh")"
lab_dir="$("$here/lab.sh")"

out="$here/out"
mkdir -p "$out/lab"
cp -f "$kernel_dir/bzImage" "$kernel_dir/vmlinux" "$initramfs_dir/initramfs.cpio" "$rootfs_dir/rootfs.ext4" "$out/"
cp -f "$lab_dir/vmlinuz" "$lab_dir/vmlinux" "$lab_dir/l1.cpio" "$lab_dir/debian-initramfs.cpio" "$lab_dir/VERSION" "$out/lab/"
for f in bzImage vmlinux initramfs.cpio rootfs.ext4 lab/vmlinuz lab/vmlinux lab/l1.cpio lab/debian-initramfs.cpio; do
    echo "$out/$f"
done
