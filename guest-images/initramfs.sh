#!/usr/bin/env bash
# Builds the guest initramfs: busybox-static and initramfs/init, as an
# uncompressed newc cpio (nothing to decompress at boot).
# Prints the cache directory holding initramfs.cpio.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

ensure_packages busybox-static:/bin/busybox cpio:/bin/cpio

busybox_version="$(dpkg-query -W -f='${Version}' busybox-static)"
# Bump when a change to this script changes what it builds (not for messages).
recipe=2
hash="$(inputs_hash "$here/initramfs/init" "$here/initramfs/stop-signals" "$here/common.sh" "busybox-static=$busybox_version" "recipe=$recipe")"
dest="$RVMM_CACHE_DIR/initramfs-$hash"
cached initramfs "$dest" initramfs.cpio && exit 0

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
populate_root "$root"
mkdir -p "$dest.tmp"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null --reproducible -o -H newc --owner=0:0 --quiet) \
    > "$dest.tmp/initramfs.cpio"
publish initramfs "$dest"
