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
recipe=1
hash="$(inputs_hash "$here/initramfs/init" "busybox-static=$busybox_version" "recipe=$recipe")"
dest="$RVMM_CACHE_DIR/initramfs-$hash"
if [ -f "$dest/initramfs.cpio" ]; then
    log "initramfs: cached ($dest)"
    echo "$dest"
    exit 0
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
cp /bin/busybox "$root/bin/busybox"
ln -s busybox "$root/bin/sh"
install -m 0755 "$here/initramfs/init" "$root/init"
# The kernel opens /dev/console for /init's stdio before anything is mounted.
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
"${sudo[@]}" mknod -m 600 "$root/dev/console" c 5 1
mkdir -p "$dest.tmp"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null --reproducible -o -H newc --owner=0:0 --quiet) \
    > "$dest.tmp/initramfs.cpio"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
log "initramfs: built ($dest)"
echo "$dest"
