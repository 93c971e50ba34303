#!/usr/bin/env bash
# Checks that src/link/hot-text.txt still fits the code: the release link
# packs the functions it names at the front of .text, so an idle VM maps
# about 0.55 MiB of rvmm's text. A list that names functions the build no
# longer has (renamed, new closures) scatters them among cold code, and the
# kernel's 64 KiB fault-around then maps far more (0.75-1.1 MiB seen) for
# every VM. This is a memory check, not a timing one.
#
# Usage: tests/text-layout.sh (run by tests/run-all.sh). Needs /dev/kvm and cc.
set -euo pipefail
cd "$(dirname "$0")/.."
# A good list maps 552-616 KiB here; a stale one 744 KiB and more.
limit_kib=704
work=target/text-layout
mkdir -p "$work"
cargo build --release --bin rvmm
bin=target/x86_64-unknown-linux-gnu/release/rvmm
# The idle guest the memory bench runs.
tests/guests/build-asm-guest.sh halt "$work/halt"

# KiB of rvmm's own text that an idle VM has mapped (smaps Rss).
mapped_text_kib() {
    "$bin" --kernel "$work/halt" --mem 128 --serial off 2>/dev/null &
    local pid=$!
    # Setup takes milliseconds; by then the VM idles in its halt.
    sleep 0.5
    awk -v bin="$(realpath "$bin")" '
        /^[0-9a-f]+-[0-9a-f]+ / { text = ($2 == "r-xp" && $6 == bin) }
        text && /^Rss:/ { print $2 }' "/proc/$pid/smaps" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# The fewest of three runs: what the first maps depends on the page cache.
best=""
for _ in 1 2 3; do
    kib=$(mapped_text_kib)
    kib=${kib:-0}
    if [ "$kib" -gt 0 ] && { [ -z "$best" ] || [ "$kib" -lt "$best" ]; }; then
        best=$kib
    fi
done
if [ -z "$best" ]; then
    echo "text-layout: the idle VM did not start; run $bin --kernel $work/halt --mem 128 to see why" >&2
    exit 1
fi
if [ "$best" -gt "$limit_kib" ]; then
    echo "text-layout: an idle VM maps $best KiB of rvmm's text (limit $limit_kib KiB): src/link/hot-text.txt is stale; regenerate it with src/link/profile-hot-text.sh (a few minutes) and commit it" >&2
    exit 1
fi
echo "text-layout: an idle VM maps $best KiB of rvmm's text (limit $limit_kib KiB)"
