#!/usr/bin/env bash
# Everything CI runs, on a fresh machine too: builds the guest images
# (installing what they need), fuzzes briefly, then runs every cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
guest-images/build.sh
tests/fuzz.sh 30
cargo test --workspace
