/* The smallest useful guest: print one line on COM1, then end the VM: first
 * through QEMU's isa-debug-exit port 0xf4 (QEMU's microvm has no i8042; rvmm
 * and Firecracker ignore the port), then by a reset through the i8042. Built twice: with -DPVH (entered in 32-bit protected mode through
 * the PVH note) and without (entered in 64-bit mode at the ELF entry). The
 * instructions used encode the same way in both modes. */
#include "note.h"

    .section .text.entry, "ax"
#ifdef PVH
    .code32
#else
    .code64
#endif
    .globl pvh_start, linux64_start
pvh_start:
linux64_start:
    mov $message, %esi
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, (%dx)
    jmp 1b
2:  out %al, $0xf4
    mov $0xfe, %al
    out %al, $0x64
3:  hlt
    jmp 3b

    .section .rodata
message:
#ifdef PVH
    .asciz "Hello from the rvmm PVH test guest\n"
#else
    .asciz "Hello from the rvmm 64-bit test guest\n"
#endif
