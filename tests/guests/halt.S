/* An idle guest: print one line on COM1, then halt with interrupts off for
 * good. Its vCPU sleeps in the host kernel, which makes it the guest for
 * measuring memory overhead and density. */
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
    cli
    mov $message, %esi
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, (%dx)
    jmp 1b
2:  hlt
    jmp 2b

    .section .rodata
message:
    .asciz "halt: ready\n"
