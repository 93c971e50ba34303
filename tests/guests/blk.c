/* A small polled virtio-mmio block driver. Finds its disks from the
 * virtio_mmio.device= entries of the kernel command line, then for each:
 * reports capacity, read-only flag and ID, checksums every sector (FNV-1a
 * over 64-bit words),
 * asks for a sector past the end, and, if the command line says
 * "blktest.write", writes a pattern, flushes and reads it back.
 * "blktest.tag=<hex>" mixes a number into that pattern, so VMs that share
 * a host can tell their writes apart. */
#include "guest.h"

#include "virtio_mmio.h"

#define F_RO (1u << 5)
#define F_FLUSH (1u << 9)

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8

#define QSIZE 8
#define CHUNK (64 * 1024)

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
static u8 buffer[CHUNK] __attribute__((aligned(4096)));

static u16 used_seen;



/* One request: header, optional data, status. Returns the status byte. */
static u8 request(u64 base, u32 type, u64 sector, void *data, u32 len, int device_writes) {
    header.type = type;
    header.reserved = 0;
    header.sector = sector;
    status = 0xff;
    descs[0] = (struct desc){(u64)&header, 16, D_NEXT, 1};
    if (len) {
        descs[1] = (struct desc){(u64)data, len, (u16)(D_NEXT | (device_writes ? D_WRITE : 0)), 2};
        descs[2] = (struct desc){(u64)&status, 1, D_WRITE, 0};
    } else {
        descs[0].next = 2;
        descs[2] = (struct desc){(u64)&status, 1, D_WRITE, 0};
    }
    avail.ring[avail.idx % QSIZE] = 0;
    barrier();
    avail.idx++;
    barrier();
    REG(base, QUEUE_NOTIFY) = 0;
    while (*(volatile u16 *)&used.idx == used_seen) {
    }
    used_seen++;
    REG(base, INTERRUPT_ACK) = REG(base, INTERRUPT_STATUS);
    return *(volatile u8 *)&status;
}

static void put_name(int index) {
    put_str("blk vd");
    put_char((char)('a' + index));
    put_str(": ");
}

/* Bench mode ("blkbench.seqread" etc. on the command line): I/O only, no
 * checks, between two lines the host times. Returns bytes moved. */
static u64 bench(u64 base, u64 capacity, const char *cmdline) {
    int seq = contains(cmdline, "blkbench.seq");
    int writes = contains(cmdline, "write");
    u32 len = seq ? CHUNK : 4096;
    u64 moved = 0, x = 88172645463325252UL;
    u64 requests = contains(cmdline, "blkbench.none") ? 0 : seq ? capacity * 512 / CHUNK : 4096;
    /* The host times the transfer from this line to the result line. */
    put_str("blkbench: start\n");
    for (u64 r = 0; r < requests; r++) {
        u64 sector;
        if (seq) {
            sector = r * (CHUNK / 512);
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            sector = (x % (capacity / 8)) * 8;
        }
        if (request(base, writes ? T_OUT : T_IN, sector, buffer, len, !writes) != 0) return moved;
        moved += len;
    }
    if (writes) request(base, T_FLUSH, 0, 0, 0, 0);
    return moved;
}

static const char *bench_cmdline;
/* Added to every byte of the write pattern ("blktest.tag=<hex>"). */
static u8 tag;
/* "blktest.loop": write and flush sectors one by one until killed. */
static int contains_loop;

static void test_disk(int index, u64 base, int write) {
    if (REG(base, MAGIC) != 0x74726976 || REG(base, VERSION) != 2 || REG(base, DEVICE_ID) != 2) {
        put_name(index);
        put_str("not a virtio 1.x block device\n");
        return;
    }
    REG(base, STATUS) = 0;
    REG(base, STATUS) = S_ACK;
    REG(base, STATUS) = S_ACK | S_DRIVER;
    REG(base, DEVICE_FEATURES_SEL) = 0;
    u32 features = REG(base, DEVICE_FEATURES);
    REG(base, DRIVER_FEATURES_SEL) = 0;
    REG(base, DRIVER_FEATURES) = features & (F_RO | F_FLUSH);
    REG(base, DRIVER_FEATURES_SEL) = 1;
    REG(base, DRIVER_FEATURES) = 1; /* VIRTIO_F_VERSION_1 */
    REG(base, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
    if (!(REG(base, STATUS) & S_FEATURES_OK)) {
        put_name(index);
        put_str("features refused\n");
        return;
    }
    REG(base, QUEUE_SEL) = 0;
    if (REG(base, QUEUE_NUM_MAX) < QSIZE) return;
    for (int i = 0; i < QSIZE; i++) descs[i] = (struct desc){0, 0, 0, 0};
    avail.idx = 0;
    used.idx = 0;
    used_seen = 0;
    REG(base, QUEUE_NUM) = QSIZE;
    REG(base, QUEUE_DESC_LOW) = (u32)(u64)descs;
    REG(base, QUEUE_DESC_HIGH) = 0;
    REG(base, QUEUE_AVAIL_LOW) = (u32)(u64)&avail;
    REG(base, QUEUE_AVAIL_HIGH) = 0;
    REG(base, QUEUE_USED_LOW) = (u32)(u64)&used;
    REG(base, QUEUE_USED_HIGH) = 0;
    REG(base, QUEUE_READY) = 1;
    REG(base, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;

    u64 capacity = *(volatile u64 *)(base + CONFIG);
    if (contains_loop) {
        /* Durability loop: write sector k with its pattern, flush, report;
         * on the first error, say which request failed and how. */
        for (u64 k = 0; k < capacity; k++) {
            for (u32 i = 0; i < 512; i++) buffer[i] = (u8)(k * 7 + i);
            u8 wst = request(base, T_OUT, k, buffer, 512, 0);
            u8 fst = wst ? 0xff : request(base, T_FLUSH, 0, 0, 0, 0);
            if (wst || fst) {
                put_str("blk loop stopped at ");
                put_hex(k);
                put_str(" write status ");
                put_hex(wst);
                put_str(" flush status ");
                put_hex(fst);
                put_char('\n');
                break;
            }
            put_str("blk flushed ");
            put_hex(k);
            put_char('\n');
        }
        REG(base, STATUS) = 0;
        return;
    }
    if (bench_cmdline) {
        u64 moved = bench(base, capacity, bench_cmdline);
        put_str("blkbench: moved ");
        put_hex(moved);
        put_char('\n');
        REG(base, STATUS) = 0;
        return;
    }
    put_name(index);
    put_str("capacity ");
    put_hex(capacity);
    put_str(features & F_RO ? " ro\n" : " rw\n");

    char id[21] = {0};
    u8 st = request(base, T_GET_ID, 0, id, 20, 1);
    put_name(index);
    put_str("id status ");
    put_hex(st);
    put_str(" id ");
    put_str(id);
    put_char('\n');

    u64 hash = 14695981039346656037UL;
    u8 worst = 0;
    for (u64 sector = 0; sector < capacity; sector += CHUNK / 512) {
        u64 left = (capacity - sector) * 512;
        u32 len = left < CHUNK ? (u32)left : CHUNK;
        st = request(base, T_IN, sector, buffer, len, 1);
        if (st > worst) worst = st;
        /* FNV-1a over 64-bit little-endian words: eight times less guest
         * work than per byte, which matters where guest code is emulated. */
        for (u32 i = 0; i < len; i += 8) {
            hash ^= *(u64 *)(buffer + i);
            hash *= 1099511628211UL;
        }
    }
    put_name(index);
    put_str("read status ");
    put_hex(worst);
    put_str(" fnv1a ");
    put_hex(hash);
    put_char('\n');

    st = request(base, T_IN, capacity, buffer, 512, 1);
    put_name(index);
    put_str("past-end status ");
    put_hex(st);
    put_char('\n');

    if (write) {
        /* Sectors 2..9: byte k of the range is (k * 31 + 7 + disk + tag) & 0xff. */
        u8 first = (u8)(7 + index + tag);
        for (u32 k = 0; k < 4096; k++) buffer[k] = (u8)(k * 31 + first);
        u8 wst = request(base, T_OUT, 2, buffer, 4096, 0);
        u8 fst = request(base, T_FLUSH, 0, 0, 0, 0);
        for (u32 k = 0; k < 4096; k++) buffer[k] = 0;
        u8 rst = request(base, T_IN, 2, buffer, 4096, 1);
        int same = 1;
        for (u32 k = 0; k < 4096; k++) same &= buffer[k] == (u8)(k * 31 + first);
        put_name(index);
        put_str("write status ");
        put_hex(wst);
        put_str(" flush status ");
        put_hex(fst);
        put_str(" readback status ");
        put_hex(rst);
        put_str(same ? " matches\n" : " differs\n");
    }
    REG(base, STATUS) = 0;
}

void guest_main(int kind, u64 info) {
    /* The command line, from hvm_start_info (PVH) or boot_params. */
    const char *cmdline = (const char *)(kind == KIND_PVH ? read64(info + 24) : (u64)read32(info + 0x228));
    int write = contains(cmdline, "blktest.write");
    if (contains(cmdline, "blkbench.")) bench_cmdline = cmdline;
    contains_loop = contains(cmdline, "blktest.loop");
    for (const char *s = after(cmdline, "blktest.tag="); s && ((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')); s++)
        tag = (u8)(tag * 16 + (*s >= 'a' ? *s - 'a' + 10 : *s - '0'));
    int index = 0;
    /* Entries look like virtio_mmio.device=<size>@0x<base>:<irq>; rvmm
     * gives 4K windows, QEMU 512-byte ones. */
    for (const char *s = cmdline; *s; s++) {
        const char *key = "virtio_mmio.device=";
        const char *a = s, *b = key;
        while (*b && *a == *b) a++, b++;
        if (*b) continue;
        while (*a && *a != '@') a++;
        if (a[0] != '@' || a[1] != '0' || a[2] != 'x') continue;
        u64 base = 0;
        for (a += 3; *a && *a != ':'; a++) {
            char c = *a;
            base = base * 16 + (u64)(c >= 'a' ? c - 'a' + 10 : c - '0');
        }
        test_disk(index++, base, write);
    }
    /* QEMU's microvm does not name its virtio-mmio slots on a PVH guest's
     * command line: look for block devices in its slots (512 bytes each
     * from 0xfeb00000). */
    for (u64 slot = 0; index == 0 && slot < 32; slot++) {
        u64 base = 0xfeb00000UL + slot * 0x200;
        if (REG(base, MAGIC) == 0x74726976 && REG(base, DEVICE_ID) == 2) test_disk(index++, base, write);
    }
    put_str("blk: done, ");
    put_hex((u64)index);
    put_str(" disks\n");
}
