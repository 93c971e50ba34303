#!/usr/bin/env bash
# Everything CI runs, on a fresh machine too: formatting and lints, the guest
# images (installing what they need), a short fuzz run, then every cargo
# test (the Linux ones in the hardware-KVM lab where /dev/kvm is PVM-backed),
# then a check of the release binary's text layout (tests/text-layout.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf '\n== run-all: %s (%d s in)\n' "$*" $((SECONDS - started)); }
step "cargo fmt --check"
cargo fmt --all -- --check || { echo "run-all: code is not formatted: run 'cargo fmt --all'" >&2; exit 1; }
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
step "guest images"
guest-images/build.sh
step "fuzzing, 30 s a target"
tests/fuzz.sh 30
step "cargo test"
cargo test --workspace
step "release text layout"
tests/text-layout.sh
step "done"
