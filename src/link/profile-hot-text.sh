#!/bin/bash
# Regenerates src/link/hot-text.txt, the functions that the release link
# places first in .text (see build.rs). Run it after large code changes:
# a stale list costs resident memory per VM, never correctness.
#
# It builds rvmm unstripped, single-steps it (steptrace.c) through the runs
# the benchmark measures (an idle VM from start to SIGTERM, a guest that
# prints and exits, two vCPUs with a disk), and lists the functions in the
# order they first ran. Takes a few minutes; needs /dev/kvm, gcc, nm, python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=target/hot-text
mkdir -p "$work"

# Symbols come back through RUSTFLAGS, not through the profile: a profile
# setting would change every crate's symbol hashes, and the list would name
# functions the real build does not have. (RUSTFLAGS replaces the target's
# rustflags in .cargo/config.toml, so it repeats them.)
RUSTFLAGS="-C target-feature=+crt-static -C strip=none" CARGO_TARGET_DIR="$work/target" \
    cargo build --release --bin rvmm
bin="$work/target/x86_64-unknown-linux-gnu/release/rvmm"
gcc -O2 -Wall -o "$work/steptrace" src/link/steptrace.c

# The same flags as tests/common/mod.rs builds its guests with.
for guest in halt hello; do
    cc -ffreestanding -fno-pic -no-pie -nostdlib -static -mno-red-zone \
        -mgeneral-regs-only -O2 -Wall -Werror -Wl,--build-id=none \
        -Wl,-z,max-page-size=4096 -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments \
        -Wl,-T,tests/guests/guest.ld -DPVH -Wl,-e,pvh_start \
        -o "$work/$guest" "tests/guests/$guest.S"
done
truncate -s 16M "$work/disk.img"

trace() {
    local name=$1
    shift
    echo "tracing: $*" >&2
    "$work/steptrace" "$work/$name.offsets" "$work/$name.out" -- "$bin" "$@" \
        >"$work/$name.out" 2>&1
    grep -q -E "ready|Hello" "$work/$name.out" || {
        echo "the traced guest printed nothing; see $work/$name.out" >&2
        exit 1
    }
}
trace idle --kernel "$work/halt" --mem 128
trace hello --kernel "$work/hello" --mem 128
trace smp-disk --kernel "$work/halt" --mem 2048 --cpus 2 --disk "$work/disk.img"

python3 - "$bin" "$work"/{idle,hello,smp-disk}.offsets >src/link/hot-text.txt <<'PY'
import bisect, subprocess, sys
binary, traces = sys.argv[1], sys.argv[2:]
functions = []
for line in subprocess.run(["nm", "-S", binary], capture_output=True, text=True, check=True).stdout.splitlines():
    fields = line.split()
    if len(fields) == 4 and fields[2] in "tTwW":
        functions.append((int(fields[0], 16), int(fields[1], 16), fields[3]))
functions.sort()
starts = [f[0] for f in functions]
listed = set()
for trace in traces:
    for line in open(trace):
        offset = int(line, 16)
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            continue
        start, size, name = functions[i]
        if offset < start + size and name not in listed:
            listed.add(name)
            print(name)
PY
echo "src/link/hot-text.txt: $(wc -l <src/link/hot-text.txt) functions" >&2
