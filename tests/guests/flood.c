/* A guest that floods its disk with the largest requests rvmm accepts: a
 * read into 200 descriptors of 1 MiB each (200 MiB), offered in every slot
 * of its queue and re-offered, half a ring at a time, as the device returns
 * them, for ever. Without a budget per notification the device would work
 * through 256 such requests (50 GiB) before looking at anything else; rvmm
 * must still hear a stop signal within a few hundred milliseconds. */
#include "guest.h"

#define REG(base, off) (*(volatile u32 *)((base) + (off)))
#define QSIZE 256
#define DATA_DESCS 200
#define DESC_BYTES (1024 * 1024)

struct desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};

static struct desc descs[QSIZE] __attribute__((aligned(4096)));
static struct {
    u16 flags, idx, ring[QSIZE];
} avail __attribute__((aligned(4096)));
static struct {
    u16 flags, idx;
    struct {
        u32 id, len;
    } ring[QSIZE];
} used __attribute__((aligned(4096)));
static struct {
    u32 type, reserved;
    u64 sector;
} header;
static u8 status;
static u8 buffer[DESC_BYTES] __attribute__((aligned(4096)));

void guest_main(int kind, u64 info) {
    const char *cmdline = (const char *)(kind == KIND_PVH ? read64(info + 24) : (u64)read32(info + 0x228));
    const char *s = after(cmdline, "virtio_mmio.device=");
    if (!s) {
        put_str("flood: no disk\n");
        return;
    }
    while (*s && *s != '@') s++;
    u64 base = 0;
    for (s += 3; *s && *s != ':'; s++) base = base * 16 + (u64)(*s >= 'a' ? *s - 'a' + 10 : *s - '0');

    REG(base, 0x70) = 0;
    REG(base, 0x70) = 1;
    REG(base, 0x70) = 3;
    REG(base, 0x24) = 1;
    REG(base, 0x20) = 1; /* VIRTIO_F_VERSION_1 */
    REG(base, 0x70) = 11;
    REG(base, 0x30) = 0;
    REG(base, 0x38) = QSIZE;
    REG(base, 0x80) = (u32)(u64)descs;
    REG(base, 0x84) = 0;
    REG(base, 0x90) = (u32)(u64)&avail;
    REG(base, 0x94) = 0;
    REG(base, 0xa0) = (u32)(u64)&used;
    REG(base, 0xa4) = 0;
    REG(base, 0x44) = 1;
    REG(base, 0x70) = 15;

    header.type = 0; /* read from sector 0 */
    descs[0] = (struct desc){(u64)&header, 16, 1, 1};
    for (u16 i = 1; i <= DATA_DESCS; i++) descs[i] = (struct desc){(u64)buffer, DESC_BYTES, 3, (u16)(i + 1)};
    descs[DATA_DESCS + 1] = (struct desc){(u64)&status, 1, 2, 0};
    for (int i = 0; i < QSIZE; i++) avail.ring[i] = 0;
    avail.idx = QSIZE;
    put_str("flood: started\n");
    REG(base, 0x50) = 0;
    for (;;) {
        u16 done = *(volatile u16 *)&used.idx;
        u16 offered = *(volatile u16 *)&avail.idx;
        if ((u16)(offered - done) <= QSIZE / 2) {
            *(volatile u16 *)&avail.idx = (u16)(done + QSIZE);
            REG(base, 0x50) = 0;
        }
    }
}
