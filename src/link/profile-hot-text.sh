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
# rustflags in .cargo/config.toml, so it repeats them.) `cargo bench`
# builds rvmm with its dev-dependencies' features unified in, which changes
# the hashes too, so the list names each function as both builds do.
export RUSTFLAGS="-C target-feature=+crt-static -C strip=none" CARGO_TARGET_DIR="$work/target"
built="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/rvmm"
cargo build --release --bin rvmm
cp "$built" "$work/rvmm"
cargo bench --no-run
cp "$built" "$work/rvmm-bench"
unset RUSTFLAGS CARGO_TARGET_DIR
bin="$work/rvmm"
gcc -O2 -Wall -o "$work/steptrace" src/link/steptrace.c

for guest in halt hello; do
    tests/guests/build-asm-guest.sh "$guest" "$work/$guest"
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

python3 - "$bin" "$work/rvmm-bench" "$work"/{idle,hello,smp-disk}.offsets \
    >src/link/hot-text.txt <<'PY'
import bisect, re, subprocess, sys
binary, other_build, traces = sys.argv[1], sys.argv[2], sys.argv[3:]

def functions(path):
    out = subprocess.run(["nm", "-S", path], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "tTwW":
            found.append((int(fields[0], 16), int(fields[1], 16), fields[3]))
    return sorted(found)

def unhashed(name):
    # A function's name without what differs between builds: the legacy
    # mangling's hash, LLVM's and the compiler's numbered suffixes.
    return re.sub(r"(17h[0-9a-f]{16}E)?(\.llvm\.\d+|\.\d+)*$", "", name)

traced = functions(binary)
starts = [f[0] for f in traced]
as_built_there = {}
for _, size, name in functions(other_build):
    as_built_there.setdefault(unhashed(name), []).append((size, name))

def same_function_there(name, size):
    # Instantiations of one generic share a name without its hash: take
    # those of this one's size, or else the nearest size.
    there = as_built_there.get(unhashed(name), [])
    if not there:
        return []
    nearest = min(abs(s - size) for s, _ in there)
    return [n for s, n in there if abs(s - size) == nearest]
listed = set()
for trace in traces:
    for line in open(trace):
        offset = int(line, 16)
        i = bisect.bisect_right(starts, offset) - 1
        if i < 0:
            continue
        start, size, name = traced[i]
        if offset >= start + size or name in listed:
            continue
        for same in [name] + same_function_there(name, size):
            if same not in listed:
                listed.add(same)
                print(same)
PY
# Run at full speed, the main thread often waits on a channel that
# single-stepped runs find already filled (the race goes the other way), and
# std then makes the main thread's handle. Named here, not traced.
nm "$bin" | awk '$3 ~ /3std6thread7current12init_current/ { print $3 }' >>src/link/hot-text.txt
echo "src/link/hot-text.txt: $(wc -l <src/link/hot-text.txt) functions" >&2
