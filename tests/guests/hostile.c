/* A hostile guest: after finding its disk, it pokes everything rvmm exposes
 * with values no driver would write: every virtio-mmio register and config
 * byte, queues outside RAM and on top of the MMIO window, notifications for
 * queues that do not exist, descriptor loops, a descriptor table rewritten
 * between notifications, and the serial and i8042 registers in every order.
 * It never issues a well-formed write request, so the disk must not change.
 * If rvmm is still there at the end, it says so. */
#include "guest.h"

#define REG(base, off) (*(volatile u32 *)((base) + (off)))

struct desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};

static struct desc descs[16] __attribute__((aligned(4096)));
static u16 avail[64] __attribute__((aligned(4096)));
static u32 used[64] __attribute__((aligned(4096)));

static u64 find_disk(const char *cmdline) {
    for (const char *s = cmdline; *s; s++) {
        const char *key = "virtio_mmio.device=", *a = s, *b = key;
        while (*b && *a == *b) a++, b++;
        if (*b) continue;
        while (*a && *a != '@') a++;
        u64 base = 0;
        for (a += 3; *a && *a != ':'; a++) base = base * 16 + (u64)(*a >= 'a' ? *a - 'a' + 10 : *a - '0');
        return base;
    }
    return 0;
}

static u32 next_random(u32 *x) {
    *x ^= *x << 13;
    *x ^= *x >> 17;
    *x ^= *x << 5;
    return *x;
}

/* Brings the device to DRIVER_OK with queue 0 at the given places. */
static void setup(u64 base, u64 desc, u64 av, u64 us, u32 size) {
    REG(base, 0x70) = 0;
    REG(base, 0x70) = 1;
    REG(base, 0x70) = 3;
    REG(base, 0x24) = 1;
    REG(base, 0x20) = 1;
    REG(base, 0x70) = 11;
    REG(base, 0x30) = 0;
    REG(base, 0x38) = size;
    REG(base, 0x80) = (u32)desc;
    REG(base, 0x84) = (u32)(desc >> 32);
    REG(base, 0x90) = (u32)av;
    REG(base, 0x94) = (u32)(av >> 32);
    REG(base, 0xa0) = (u32)us;
    REG(base, 0xa4) = (u32)(us >> 32);
    REG(base, 0x44) = 1;
    REG(base, 0x70) = 15;
}

void guest_main(int kind, u64 info) {
    const char *cmdline = (const char *)(kind == KIND_PVH ? read64(info + 24) : (u64)read32(info + 0x228));
    u64 base = find_disk(cmdline);
    if (!base) {
        put_str("hostile: no disk\n");
        return;
    }
    u32 x = 0x12345678;

    /* 1. Garbage to every register and config byte, in every width the bus allows. */
    for (int round = 0; round < 4; round++) {
        for (u32 off = 0; off < 0x200; off += 4) {
            if (off == 0x70 && round == 3) continue;
            REG(base, off) = next_random(&x);
            (void)REG(base, off);
            *(volatile u8 *)(base + off + 1) = (u8)next_random(&x);
            *(volatile u16 *)(base + off + 2) = (u16)next_random(&x);
        }
    }

    /* 2. Queues outside RAM, on the MMIO window itself, and of silly sizes. */
    setup(base, 0xffffffff0000UL, 0xfffffffff000UL, 0xfffffffff800UL, 8);
    for (u32 q = 0; q < 16; q++) REG(base, 0x50) = q;
    setup(base, base, base + 0x100, base + 0x200, 8);
    REG(base, 0x50) = 0;
    setup(base, (u64)descs, (u64)avail, (u64)used, 3);
    REG(base, 0x50) = 0;
    setup(base, (u64)descs, (u64)avail, (u64)used, 0);
    REG(base, 0x50) = 0;
    setup(base, (u64)descs + 1, (u64)avail + 1, (u64)used + 2, 8);
    REG(base, 0x50) = 0;

    /* 3. A descriptor loop, then an avail index far ahead. */
    setup(base, (u64)descs, (u64)avail, (u64)used, 8);
    descs[0] = (struct desc){(u64)descs, 16, 1, 1};
    descs[1] = (struct desc){(u64)descs, 16, 1, 0};
    avail[2] = 0;
    avail[1] = 1;
    REG(base, 0x50) = 0;
    avail[1] = 60000;
    REG(base, 0x50) = 0;

    /* 4. A descriptor table that changes between notifications: requests
     * whose "header" is the table itself, and readable data outside RAM. */
    setup(base, (u64)descs, (u64)avail, (u64)used, 8);
    for (u16 i = 0; i < 32; i++) {
        descs[0] = (struct desc){(u64)descs + i, 16, 1, 1};
        descs[1] = (struct desc){i & 1 ? 0xfffffffff000UL : (u64)used, 4096, (u16)(i & 2 ? 3 : 1), 2};
        descs[2] = (struct desc){(u64)&descs[15], 1, 2, 0};
        avail[2 + (i % 8)] = 0;
        avail[1] = (u16)(i + 1);
        REG(base, 0x50) = 0;
        descs[1].len = 0xffffffff;
    }

    /* 5. Reset in the middle, notifications while reset, then garbage status. */
    REG(base, 0x70) = 0;
    REG(base, 0x50) = 0;
    REG(base, 0x70) = 0xff;
    REG(base, 0x70) = 0;

    /* 6. Serial registers (not the data register, to keep the console
     * readable) and the i8042, in every order, except the reset command. */
    for (int round = 0; round < 64; round++) {
        u8 reg = (u8)(1 + next_random(&x) % 7);
        outb((u16)(0x3f8 + reg), (u8)next_random(&x));
        (void)inb((u16)(0x3f8 + next_random(&x) % 8));
        u8 cmd = (u8)next_random(&x);
        if (cmd != 0xfe) outb(0x64, cmd);
        outb(0x60, (u8)next_random(&x));
        (void)inb(0x60);
        (void)inb(0x64);
    }
    /* Put the UART back the way a console expects it (8N1, no loopback). */
    outb(0x3fb, 0x03);
    outb(0x3fc, 0x08);
    outb(0x3f9, 0x00);
    put_str("\nhostile: survived\n");
}
