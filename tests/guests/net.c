/* A small polled virtio-net driver for the card at the first virtio-mmio
 * window. Prints the card's MAC, broadcasts one frame of EtherType 0x88b5
 * (for local experiments) whose payload is "rvmm-net-guest-to-host", then
 * prints the payload of every 0x88b5 frame it receives ("net: received
 * ..."). A received payload "rvmm-net-quit" resets the VM. It prints the
 * device's feature bits 0-31 first and takes none but MAC (and VERSION_1). */
#include "guest.h"
#include "virtio_mmio.h"

#define BASE 0xd0001000UL
#define F_MAC (1u << 5)
#define QSIZE 8
#define BUF 2048
#define HDR 12
#define ETHERTYPE_LO 0xb5
#define ETHERTYPE_HI 0x88

struct queue {
    struct desc descs[QSIZE] __attribute__((aligned(4096)));
    struct {
        u16 flags, idx, ring[QSIZE];
    } avail __attribute__((aligned(4096)));
    struct {
        u16 flags, idx;
        struct {
            u32 id, len;
        } ring[QSIZE];
    } used __attribute__((aligned(4096)));
    u16 used_seen;
};

static struct queue rx, tx;
static u8 rx_buffers[QSIZE][BUF] __attribute__((aligned(4096)));
static u8 tx_buffer[BUF] __attribute__((aligned(4096)));
static u8 mac[6];

static void setup_queue(u32 index, struct queue *q) {
    REG(BASE, QUEUE_SEL) = index;
    REG(BASE, QUEUE_NUM) = QSIZE;
    REG(BASE, QUEUE_DESC_LOW) = (u32)(u64)q->descs;
    REG(BASE, QUEUE_DESC_HIGH) = 0;
    REG(BASE, QUEUE_AVAIL_LOW) = (u32)(u64)&q->avail;
    REG(BASE, QUEUE_AVAIL_HIGH) = 0;
    REG(BASE, QUEUE_USED_LOW) = (u32)(u64)&q->used;
    REG(BASE, QUEUE_USED_HIGH) = 0;
    REG(BASE, QUEUE_READY) = 1;
}

static void make_available(u32 index, struct queue *q, u16 head) {
    q->avail.ring[q->avail.idx % QSIZE] = head;
    barrier();
    q->avail.idx++;
    barrier();
    REG(BASE, QUEUE_NOTIFY) = index;
}

static void put_byte_hex(u8 b) {
    put_char("0123456789abcdef"[b >> 4]);
    put_char("0123456789abcdef"[b & 15]);
}

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    if (REG(BASE, MAGIC) != 0x74726976 || REG(BASE, VERSION) != 2 || REG(BASE, DEVICE_ID) != 1) {
        put_str("net: no virtio 1.x network card at the first window\n");
        outb(0x64, 0xfe);
    }
    REG(BASE, STATUS) = 0;
    REG(BASE, STATUS) = S_ACK | S_DRIVER;
    REG(BASE, DEVICE_FEATURES_SEL) = 0;
    u32 features = REG(BASE, DEVICE_FEATURES);
    put_str("net: features ");
    put_hex(features);
    put_char('\n');
    REG(BASE, DRIVER_FEATURES_SEL) = 0;
    REG(BASE, DRIVER_FEATURES) = features & F_MAC;
    REG(BASE, DRIVER_FEATURES_SEL) = 1;
    REG(BASE, DRIVER_FEATURES) = 1; /* VIRTIO_F_VERSION_1 */
    REG(BASE, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
    setup_queue(0, &rx);
    setup_queue(1, &tx);
    REG(BASE, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;

    put_str("net: mac ");
    for (int i = 0; i < 6; i++) {
        mac[i] = *(volatile u8 *)(BASE + CONFIG + i);
        put_byte_hex(mac[i]);
        put_char(i < 5 ? ':' : '\n');
    }
    for (u16 i = 0; i < QSIZE; i++) {
        rx.descs[i] = (struct desc){(u64)rx_buffers[i], BUF, D_WRITE, 0};
        make_available(0, &rx, i);
    }

    /* Header (zeros), then broadcast destination, our source, EtherType. */
    u8 *frame = tx_buffer + HDR;
    for (int i = 0; i < 6; i++) frame[i] = 0xff, frame[6 + i] = mac[i];
    frame[12] = ETHERTYPE_HI;
    frame[13] = ETHERTYPE_LO;
    const char *payload = "rvmm-net-guest-to-host";
    int len = 14;
    while (*payload) frame[len++] = (u8)*payload++;
    while (len < 60) frame[len++] = 0;
    tx.descs[0] = (struct desc){(u64)tx_buffer, (u32)(HDR + len), 0, 0};
    make_available(1, &tx, 0);
    while (*(volatile u16 *)&tx.used.idx == 0) {
    }
    put_str("net: sent\n");

    for (;;) {
        if (*(volatile u16 *)&rx.used.idx == rx.used_seen) continue;
        barrier();
        u32 slot = rx.used_seen % QSIZE;
        u16 head = (u16)rx.used.ring[slot].id;
        u32 got = rx.used.ring[slot].len;
        rx.used_seen++;
        u8 *f = rx_buffers[head % QSIZE] + HDR;
        if (got > HDR + 14 && f[12] == ETHERTYPE_HI && f[13] == ETHERTYPE_LO) {
            char text[65];
            u32 n = 0;
            while (n < 64 && n < got - HDR - 14 && f[14 + n] >= ' ' && f[14 + n] <= '~') {
                text[n] = (char)f[14 + n];
                n++;
            }
            text[n] = 0;
            put_str("net: received ");
            put_str(text);
            put_char('\n');
            if (contains(text, "rvmm-net-quit")) outb(0x64, 0xfe);
        }
        make_available(0, &rx, head % QSIZE);
    }
}
