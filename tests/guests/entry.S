/* Entry points for the C test guests. Both end in guest_main(kind, info) in
 * long mode, with identity-mapped memory up to 4 GiB:
 *   linux64_start: 64-bit Linux boot protocol, RSI = boot_params ("zero page").
 *   pvh_start:     PVH, 32-bit protected mode without paging, EBX = hvm_start_info;
 *                  switches to long mode with its own page tables first. */
#include "note.h"

#define KIND_LINUX64 0
#define KIND_PVH 1

    .section .text.entry, "ax"
    .code64
    .globl linux64_start
linux64_start:
    mov $stack_top, %esp
    mov $KIND_LINUX64, %edi
    /* RSI already holds the boot_params address. */
    call guest_main
    jmp guest_reset

    .code32
    .globl pvh_start
pvh_start:
    mov %ebx, %ebp
    /* PML4[0] -> PDPT; PDPT[0..3] -> four PDs; each PD maps 1 GiB in 2 MiB pages. */
    movl $(pdpt + 3), pml4
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $12, %eax
    add $(pd + 3), %eax
    mov %eax, pdpt(, %ecx, 8)
    inc %ecx
    cmp $4, %ecx
    jne 1b
    xor %ecx, %ecx
2:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, pd(, %ecx, 8)
    mov %ecx, %eax
    shr $11, %eax
    mov %eax, pd + 4(, %ecx, 8)
    inc %ecx
    cmp $2048, %ecx
    jne 2b
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax              /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx       /* EFER */
    rdmsr
    or $0x100, %eax             /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        /* PG | PE */
    mov %eax, %cr0
    lgdt gdt_pointer
    ljmp $0x08, $from_pvh64

    .code64
from_pvh64:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $stack_top, %esp
    mov $KIND_PVH, %edi
    mov %ebp, %esi
    call guest_main
    .globl guest_reset
guest_reset:
    /* QEMU's isa-debug-exit (its microvm has no i8042), then the i8042 reset
     * that rvmm and Firecracker act on. */
    xor %eax, %eax
    out %al, $0xf4
    mov $0xfe, %al
    out %al, $0x64
3:  hlt
    jmp 3b

    .section .rodata
    .p2align 3
gdt:
    .quad 0
    .quad 0x00af9b000000ffff    /* 64-bit code */
    .quad 0x00cf93000000ffff    /* data */
gdt_end:
gdt_pointer:
    .word gdt_end - gdt - 1
    .long gdt

    .section .bss
    .p2align 12
pml4: .skip 4096
pdpt: .skip 4096
pd:   .skip 4 * 4096
stack: .skip 16384
stack_top:
