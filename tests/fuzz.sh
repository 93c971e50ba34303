#!/usr/bin/env bash
# Runs each fuzz target for a while (default 30 s; `tests/fuzz.sh 600` for
# ten minutes), starting from the committed corpus. Installs cargo-fuzz if
# missing; needs the nightly toolchain. New inputs go to a scratch corpus, so
# the committed one only changes when you copy findings in on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (once)" >&2
    cargo install cargo-fuzz --locked --quiet
fi
for target in $(cargo fuzz list --fuzz-dir fuzz); do
    scratch="$(mktemp -d)"
    echo "fuzz: $target for ${seconds}s" >&2
    cargo +nightly fuzz run --fuzz-dir fuzz "$target" "$scratch" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 12
    rm -rf "$scratch"
done
