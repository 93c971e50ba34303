/* Prints numbered lines on COM1 for ever, as fast as the UART takes them. */
#include "guest.h"

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    put_str("chatter: ready\n");
    for (u64 n = 0;; n++) {
        put_str("chatter: line ");
        put_hex(n);
        put_char('\n');
    }
}
