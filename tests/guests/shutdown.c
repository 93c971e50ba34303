/* A guest with a keyboard driver of sorts: it turns on the i8042's keyboard
 * interrupt as Linux does, then reads one mode character from COM1 ('o':
 * obey, 'i': ignore) and polls the keyboard. On Ctrl-Alt-Del it prints the
 * scan codes it got and, obeying, powers off through the ACPI sleep control
 * register (SLP_TYP=5, SLP_EN); ignoring, it keeps polling for ever. */
#include "guest.h"

#define I8042_DATA 0x60
#define I8042_COMMAND 0x64
#define I8042_OUTPUT_FULL 0x01
#define CMD_WRITE_CTR 0x60
#define CTR_KBD_INT_SYS_XLATE 0x45
#define ACPI_SLEEP_CONTROL 0x600
#define SLEEP_S5_ENABLE ((5 << 2) | (1 << 5))

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    outb(I8042_COMMAND, CMD_WRITE_CTR);
    outb(I8042_DATA, CTR_KBD_INT_SYS_XLATE);
    put_str("shutdown: keyboard on, mode?\n");
    char mode = get_char();
    put_str(mode == 'o' ? "shutdown: obeying\n" : "shutdown: ignoring\n");
    u8 previous = 0;
    for (;;) {
        if (!(inb(I8042_COMMAND) & I8042_OUTPUT_FULL)) continue;
        u8 code = inb(I8042_DATA);
        put_str("shutdown: scan code ");
        put_hex(code);
        put_char('\n');
        /* Delete pressed: 0xe0 0x53 in scan code set 1. */
        if (previous == 0xe0 && code == 0x53) {
            put_str("shutdown: Ctrl-Alt-Del\n");
            if (mode == 'o') {
                put_str("shutdown: powering off\n");
                outb(ACPI_SLEEP_CONTROL, SLEEP_S5_ENABLE);
                put_str("shutdown: still running after power-off\n");
            }
        }
        previous = code;
    }
}
