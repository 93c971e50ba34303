/* Writes the boot timer's magic byte (123 at 0xd0000000), as /init does,
 * then 1000 times more, as a guest trying to flood the host's log would. */
#include "guest.h"

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    *(volatile u8 *)0xd0000000UL = 123;
    put_str("timer: boot reported\n");
    for (int i = 0; i < 1000; i++) *(volatile u8 *)0xd0000000UL = 123;
    put_str("timer: 1000 more reports\n");
}
