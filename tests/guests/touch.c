/* Writes one byte in every 4 KiB page from 32 MiB to 224 MiB (needs
 * --mem 256), the way a guest that fills its page cache would, so the host
 * must back all of it: a test of huge pages, and a benchmark of the cost of
 * faulting guest memory in. With "touch.wait" on the command line it then
 * waits for a key, so a test can look at the host side. */
#include "guest.h"

#define START (32UL << 20)
#define END (224UL << 20)

void guest_main(int kind, u64 info) {
    const char *cmdline = (const char *)(kind == KIND_PVH ? read64(info + 24) : (u64)read32(info + 0x228));
    put_str("touch: start\n");
    for (u64 addr = START; addr < END; addr += 4096) *(volatile u8 *)addr = 1;
    put_str("touch: done\n");
    if (contains(cmdline, "touch.wait")) get_char();
}
