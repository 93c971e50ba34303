/* Raises an invalid-opcode exception with no IDT loaded: a triple fault,
 * which resets the CPU. */
#include "guest.h"

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    static const struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) no_idt = {0, 0};
    put_str("fault: raising an exception without an IDT\n");
    __asm__ volatile("lidt %0\n\tud2" : : "m"(no_idt));
    put_str("fault: still running (unexpected)\n");
}
