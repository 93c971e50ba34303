/* Executes int3 with no IDT loaded. On hardware-virtualized hosts this is a
 * triple fault (the CPU resets); PVM hosts cannot emulate int3 raised in
 * guest kernel mode, so KVM reports an emulation failure. */
#include "guest.h"

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    static const struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) no_idt = {0, 0};
    put_str("int3: raising a breakpoint without an IDT\n");
    __asm__ volatile("lidt %0\n\tint3" : : "m"(no_idt));
    put_str("int3: still running (unexpected)\n");
}
