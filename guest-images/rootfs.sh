#!/usr/bin/env bash
# Builds rootfs.ext4: the same busybox tree as the initramfs on an ext4 file
# system, for booting with the root file system on a virtio-blk disk
# (root=/dev/vda rw). Prints the cache directory holding rootfs.ext4.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

ensure_packages busybox-static:/bin/busybox e2fsprogs:/sbin/mke2fs

busybox_version="$(dpkg-query -W -f='${Version}' busybox-static)"
e2fs_version="$(dpkg-query -W -f='${Version}' e2fsprogs)"
# Bump when a change to this script changes what it builds (not for messages).
recipe=1
hash="$(inputs_hash "$here/initramfs/init" "$here/initramfs/stop-signals" "$here/common.sh" "busybox-static=$busybox_version" \
    "e2fsprogs=$e2fs_version" "recipe=$recipe")"
dest="$RVMM_CACHE_DIR/rootfs-$hash"
cached rootfs "$dest" rootfs.ext4 && exit 0

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
populate_root "$root"
mkdir -p "$dest.tmp"
# Fixed UUID and timestamps keep the image the same from run to run.
E2FSPROGS_FAKE_TIME=1 mke2fs -q -t ext4 -L rvmm-root -U 5a1e5a1e-0000-4000-8000-000000000001 \
    -E hash_seed=5a1e5a1e-0000-4000-8000-000000000002 -d "$root" -F "$dest.tmp/rootfs.ext4" 32M >&2
publish rootfs "$dest"
