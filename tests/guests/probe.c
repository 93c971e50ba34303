/* Touches hardware that rvmm does not emulate, then says it is still alive:
 * unknown ports and MMIO must read as all-ones and ignore writes. */
#include "guest.h"

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    outb(0x1234, 0x5a);
    put_str("probe: port 0x1234 reads ");
    put_hex(inb(0x1234));
    put_char('\n');
    /* The start of the 32-bit MMIO hole: no RAM and no device there. */
    *(volatile u32 *)0xd0000800UL = 0x12345678;
    put_str("probe: mmio 0xd0000800 reads ");
    put_hex(read32(0xd0000800UL));
    put_char('\n');
    put_str("probe: alive\n");
}
