#!/usr/bin/env bash
# Builds the guest kernel (bzImage and vmlinux) from Debian's linux-source-6.1,
# `tinyconfig` plus kernel/rvmm.config, with the patches in kernel/.
# Prints the cache directory holding the results.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

ensure_packages linux-source-6.1:/usr/src/linux-source-6.1.tar.xz \
    build-essential:/usr/bin/make gcc:/usr/bin/gcc flex:/usr/bin/flex bison:/usr/bin/bison \
    bc:/usr/bin/bc libelf-dev:/usr/include/libelf.h libssl-dev:/usr/include/openssl/ssl.h \
    xz-utils:/usr/bin/xz lz4:/usr/bin/lz4 cpio:/bin/cpio

# Bump when a change to this script changes what it builds (not for messages).
recipe=1
source_version="$(dpkg-query -W -f='${Version}' linux-source-6.1)"
hash="$(inputs_hash "$here/kernel/rvmm.config" "$here"/kernel/*.patch "linux-source-6.1=$source_version" "recipe=$recipe")"
dest="$RVMM_CACHE_DIR/kernel-$hash"
cached kernel "$dest" bzImage vmlinux && exit 0

work="$RVMM_CACHE_DIR/build/kernel-$hash"
rm -rf "$work"
mkdir -p "$work"
log "kernel: unpacking linux-source-6.1 $source_version"
tar -xf /usr/src/linux-source-6.1.tar.xz -C "$work"
src="$work/linux-source-6.1"
for p in "$here"/kernel/*.patch; do
    log "kernel: applying $(basename "$p")"
    patch -s -p1 -d "$src" < "$p"
done

make_kernel() { make -C "$src" ARCH=x86_64 -j"$(nproc)" "$@"; }
make_kernel -s tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/kernel/rvmm.config" >"$work/config.log" 2>&1
make_kernel -s olddefconfig >/dev/null

# Fail loudly if Kconfig dropped an option we asked for (a missing dependency).
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) grep -qx "$line" "$src/.config" || die "kernel config lost '$line'; fix kernel/rvmm.config" ;;
        "# CONFIG_"*" is not set")
            symbol="${line#\# }"; symbol="${symbol%% *}"
            if grep -q "^$symbol=" "$src/.config"; then die "kernel config has $symbol set; fix kernel/rvmm.config"; fi ;;
    esac
done < "$here/kernel/rvmm.config"

log "kernel: compiling with $(nproc) jobs (several minutes on 2 cores; full log in $work/build.log)"
if ! make_kernel bzImage vmlinux 2>&1 | tee "$work/build.log" | awk '
    / CC /  { n++; if (n % 100 == 0) { printf "guest-images: kernel: %d files compiled\n", n; fflush() } }
    / LD  *vmlinux$/ { print "guest-images: kernel: linking vmlinux"; fflush() }
    /error:/ { print; fflush() }' >&2; then
    die "kernel build failed; see $work/build.log"
fi

mkdir -p "$dest.tmp"
cp "$src/arch/x86/boot/bzImage" "$src/vmlinux" "$src/.config" "$dest.tmp/"
rm -rf "$work"
publish kernel "$dest"
