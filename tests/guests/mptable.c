/* Looks for the MP floating pointer where Linux does (first KiB of the EBDA,
 * last KiB below 640 KiB, BIOS area), checks both checksums, and reports the
 * processors, IOAPIC and interrupt routing entries it lists. */
#include "guest.h"

static u8 sum(u64 addr, u64 len) {
    u8 s = 0;
    for (u64 i = 0; i < len; i++) s += read8(addr + i);
    return s;
}

static u64 find_floating_pointer(u64 start, u64 end) {
    for (u64 p = start; p < end; p += 16) {
        if (read32(p) == 0x5f504d5f /* "_MP_" */ && sum(p, 16) == 0) return p;
    }
    return 0;
}

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    u64 fp = find_floating_pointer(0x9fc00, 0xa0000);
    if (!fp) fp = find_floating_pointer(0xf0000, 0x100000);
    if (!fp) {
        put_str("mptable: none found\n");
        return;
    }
    u64 table = read32(fp + 4);
    u16 length = (u16)read32(table + 4);
    u16 count = (u16)read32(table + 34);
    put_str("mptable: pointer ");
    put_hex(fp);
    put_str(read32(table) == 0x504d4350 /* "PCMP" */ && sum(table, length) == 0 ? " table ok\n" : " table bad\n");
    u64 cpus = 0, bsp = 0xff, ioapic = 0, irqs = 0;
    u64 p = table + 44;
    for (u16 i = 0; i < count; i++) {
        u8 type = read8(p);
        if (type == 0) {
            if (read8(p + 3) & 1) cpus++;
            if (read8(p + 3) & 2) bsp = read8(p + 1);
            p += 20;
        } else {
            if (type == 2) ioapic = read32(p + 4);
            if (type == 3) irqs++;
            p += 8;
        }
    }
    put_str("mptable: cpus ");
    put_hex(cpus);
    put_str(" bsp ");
    put_hex(bsp);
    put_str(" ioapic ");
    put_hex(ioapic);
    put_str(" irqs ");
    put_hex(irqs);
    put_char('\n');
}
