/* Reports what rvmm handed the guest, so a test can compare it with what it
 * asked for: the memory map, the command line, and the initrd's place, size
 * and FNV-1a checksum. Reads boot_params (64-bit entry) or hvm_start_info (PVH). */
#include "guest.h"

struct boot_info {
    u64 cmdline;
    u64 initrd_addr, initrd_size;
    u64 map, map_entries, map_stride;
};

/* Offsets from the Linux boot protocol (boot_params) and the PVH ABI. */
static struct boot_info from_boot_params(u64 bp) {
    struct boot_info b = {0};
    b.cmdline = read32(bp + 0x228);
    b.initrd_addr = read32(bp + 0x218);
    b.initrd_size = read32(bp + 0x21c);
    b.map = bp + 0x2d0;
    b.map_entries = read8(bp + 0x1e8);
    b.map_stride = 20;
    return b;
}

static struct boot_info from_pvh(u64 si) {
    struct boot_info b = {0};
    if (read32(si) != 0x336ec578) {
        put_str("inspect: bad hvm_start_info magic\n");
    }
    b.cmdline = read64(si + 24);
    if (read32(si + 12) > 0) {
        u64 mod = read64(si + 16);
        b.initrd_addr = read64(mod);
        b.initrd_size = read64(mod + 8);
    }
    b.map = read64(si + 40);
    b.map_entries = read32(si + 48);
    b.map_stride = 24;
    return b;
}

void guest_main(int kind, u64 info) {
    struct boot_info b = kind == KIND_PVH ? from_pvh(info) : from_boot_params(info);
    put_str(kind == KIND_PVH ? "inspect: entry pvh\n" : "inspect: entry linux64\n");

    u64 total = 0, ram = 0;
    for (u64 i = 0; i < b.map_entries; i++) {
        u64 e = b.map + i * b.map_stride;
        u64 addr = read64(e), size = read64(e + 8);
        u32 type = read32(e + 16);
        put_str("inspect: e820 ");
        put_hex(addr);
        put_char(' ');
        put_hex(size);
        put_str(type == 1 ? " ram\n" : " reserved\n");
        total += size;
        if (type == 1) ram += size;
    }
    put_str("inspect: memory total ");
    put_hex(total);
    put_str(" ram ");
    put_hex(ram);
    put_char('\n');

    put_str("inspect: cmdline ");
    if (b.cmdline) put_str((const char *)b.cmdline);
    put_char('\n');

    if (b.initrd_size) {
        u64 hash = 14695981039346656037UL;
        for (u64 p = b.initrd_addr; p < b.initrd_addr + b.initrd_size; p++) {
            hash ^= read8(p);
            hash *= 1099511628211UL;
        }
        put_str("inspect: initrd ");
        put_hex(b.initrd_addr);
        put_char(' ');
        put_hex(b.initrd_size);
        put_str(" fnv1a ");
        put_hex(hash);
        put_char('\n');
    } else {
        put_str("inspect: initrd none\n");
    }
    put_str("inspect: done\n");
}
