/* Writes the boot timer's magic byte (123 at 0xd0000000), as /init does. */
#include "guest.h"

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    *(volatile u8 *)0xd0000000UL = 123;
    put_str("timer: boot reported\n");
}
