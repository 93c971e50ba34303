# Shared helpers for the guest-image scripts. Sourced, not run.

# Where built images are cached, outside any clone, keyed by a hash of their inputs.
RVMM_CACHE_DIR="${RVMM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rvmm}"

log() { printf 'guest-images: %s\n' "$*" >&2; }
die() { printf 'guest-images: error: %s\n' "$*" >&2; exit 1; }

# Installs Debian packages that are missing. Arguments are "package:probe" pairs,
# where probe is a file whose presence shows the package is installed.
ensure_packages() {
    local missing=() pair pkg probe
    for pair in "$@"; do
        pkg="${pair%%:*}"
        probe="${pair#*:}"
        [ -e "$probe" ] || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq || die "apt-get update failed; check the network to the Debian mirror"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "could not install ${missing[*]}"
}

# Prints a short hash of the given files' contents and names, plus any extra strings.
inputs_hash() {
    { for f in "$@"; do
        if [ -f "$f" ]; then basename "$f"; cat "$f"; else printf '%s\n' "$f"; fi
    done; } | sha256sum | cut -c1-16
}

# Prints DEST and succeeds when every FILE of a build is already cached there.
cached() {
    local name="$1" dest="$2" f
    shift 2
    for f in "$@"; do
        [ -f "$dest/$f" ] || return 1
    done
    log "$name: cached ($dest)"
    echo "$dest"
}

# Moves a finished build from DEST.tmp to DEST, so a cache entry is never
# half written, and prints DEST.
publish() {
    local name="$1" dest="$2"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    log "$name: built ($dest)"
    echo "$dest"
}

# Fills DIR with the guest's root tree: busybox-static, /init (also
# /sbin/init, for a root file system on a disk) and a console node.
populate_root() {
    local root="$1" here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc,mnt}
    cp /bin/busybox "$root/bin/busybox"
    ln -sf busybox "$root/bin/sh"
    install -m 0755 "$here/initramfs/init" "$root/init"
    install -m 0644 "$here/initramfs/stop-signals" "$root/etc/stop-signals"
    ln -sf /init "$root/sbin/init"
    # The kernel opens /dev/console for init's stdio before anything is mounted.
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" mknod -m 600 "$root/dev/console" c 5 1
}
