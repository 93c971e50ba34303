#!/usr/bin/env bash
# Builds one of the assembly test guests (halt, hello) as a PVH ELF, with
# the flags tests/common/mod.rs builds every test guest with, for the
# scripts that run rvmm without the Rust tests. Usage: build-asm-guest.sh NAME OUT
set -euo pipefail
here=$(dirname "$0")
cc -ffreestanding -fno-pic -no-pie -nostdlib -static -mno-red-zone \
    -mgeneral-regs-only -O2 -Wall -Werror -Wl,--build-id=none \
    -Wl,-z,max-page-size=4096 -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments \
    -Wl,-T,"$here/guest.ld" -DPVH -Wl,-e,pvh_start \
    -o "$2" "$here/$1.S"
