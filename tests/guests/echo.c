/* Echoes what arrives on COM1 back to COM1, until an EOT (Ctrl-D) byte. */
#include "guest.h"

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    put_str("echo: ready\n");
    for (;;) {
        char c = get_char();
        if (c == 4) break;
        put_char(c);
    }
    put_str("echo: bye\n");
}
