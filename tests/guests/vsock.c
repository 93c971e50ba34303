/* A small polled virtio-vsock driver and stream stack for the device at the
 * first virtio-mmio window, for tests/vsock.rs.
 *
 * It prints its CID, connects to host port 5000 ("vsock: 5000 connected",
 * or "vsock: 5000 refused") and sends "rvmm-vsock-guest-to-host\n" there,
 * then serves: it accepts host connections to ports 6000-6999 (others get
 * RST, as Linux gives them without a listener) and obeys the lines it
 * receives on any connection:
 *   echo TEXT    sends "TEXT\n" back
 *   bulk N       sends N bytes of a pattern, within the host's credit
 *   sink N       takes the next N bytes, then prints their FNV-1a hash
 *   close        shuts the connection down, waits for the host's RST
 *   reset        resets the connection (RST)
 *   vanish       resets the VM at once, connections open
 * It prints what happens to each connection ("vsock: PORT ..."). It
 * advertises 64 KiB of receive buffer and tells the host of its credit as it
 * consumes data. */
#include "guest.h"
#include "virtio_mmio.h"

#define BASE 0xd0001000UL
#define QSIZE 16
#define HDR 44
#define BUF 4096
#define BUF_ALLOC (64 * 1024)
#define HOST_CID 2

#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7

struct hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

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

struct conn {
    int used, connecting;
    u32 local, peer;
    /* What the guest consumed, and last told the host. */
    u32 fwd_cnt, fwd_told;
    /* The host's credit: its buffer, what it consumed, what we sent. */
    u32 peer_buf_alloc, peer_fwd_cnt, tx_cnt;
    /* Bytes a "sink" still takes, and their hash so far. */
    u64 sink_left, sink_hash;
    char line[128];
    u32 line_len;
};

static struct queue rx, tx, ev;
static u8 rx_buffers[QSIZE][HDR + BUF] __attribute__((aligned(4096)));
static u8 tx_buffer[HDR + BUF] __attribute__((aligned(4096)));
static u8 ev_buffer[16];
static struct conn conns[8];
static u64 cid;
static u16 tx_sent;

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

static void put_dec(u64 v) {
    char digits[24];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) put_char(digits[--n]);
}

static void say(u32 port, const char *what) {
    put_str("vsock: ");
    put_dec(port);
    put_char(' ');
    put_str(what);
}

static u64 parse_dec(const char *s) {
    u64 v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0');
    return v;
}

static int starts_with(const char *s, const char *prefix) {
    while (*prefix)
        if (*s++ != *prefix++) return 0;
    return 1;
}

static void poll_rx(void);

/* Sends one packet and waits until the device has taken it. */
static void send(struct conn *c, u32 local, u32 peer, u16 op, u32 flags, const u8 *data, u32 len) {
    struct hdr *h = (struct hdr *)tx_buffer;
    h->src_cid = cid;
    h->dst_cid = HOST_CID;
    h->src_port = local;
    h->dst_port = peer;
    h->len = len;
    h->type = 1;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = BUF_ALLOC;
    h->fwd_cnt = c ? c->fwd_cnt : 0;
    if (c) c->fwd_told = c->fwd_cnt;
    for (u32 i = 0; i < len; i++) tx_buffer[HDR + i] = data[i];
    tx.descs[0] = (struct desc){(u64)tx_buffer, HDR + len, 0, 0};
    make_available(1, &tx, 0);
    tx_sent++;
    while (*(volatile u16 *)&tx.used.idx != tx_sent) {
    }
}

static void send_op(struct conn *c, u16 op, u32 flags) { send(c, c->local, c->peer, op, flags, 0, 0); }

static struct conn *find(u32 local, u32 peer) {
    for (int i = 0; i < 8; i++)
        if (conns[i].used && conns[i].local == local && conns[i].peer == peer) return &conns[i];
    return 0;
}

static struct conn *add(u32 local, u32 peer, const struct hdr *h) {
    for (int i = 0; i < 8; i++) {
        if (!conns[i].used) {
            struct conn *c = &conns[i];
            *c = (struct conn){0};
            c->used = 1;
            c->local = local;
            c->peer = peer;
            c->peer_buf_alloc = h->buf_alloc;
            c->peer_fwd_cnt = h->fwd_cnt;
            return c;
        }
    }
    return 0;
}

static u32 host_credit(const struct conn *c) {
    u32 in_flight = c->tx_cnt - c->peer_fwd_cnt;
    return in_flight >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

static void send_data(struct conn *c, const u8 *data, u32 len) {
    send(c, c->local, c->peer, OP_RW, 0, data, len);
    c->tx_cnt += len;
}

/* Sends `n` bytes of pattern, waiting for credit as the host reads. */
static void bulk(struct conn *c, u64 n) {
    static u8 chunk[BUF];
    u64 sent = 0;
    while (sent < n && c->used) {
        u32 credit = host_credit(c);
        if (credit == 0) {
            poll_rx();
            continue;
        }
        u32 len = BUF;
        if (len > credit) len = credit;
        if (len > n - sent) len = (u32)(n - sent);
        for (u32 i = 0; i < len; i++) chunk[i] = (u8)((sent + i) * 7 + 3);
        send_data(c, chunk, len);
        sent += len;
    }
    say(c->local, "sent ");
    put_dec(sent);
    put_str(" bytes\n");
}

static void obey(struct conn *c, const char *line) {
    say(c->local, "received ");
    put_str(line);
    put_char('\n');
    if (starts_with(line, "echo ")) {
        const char *text = line + 5;
        u32 len = 0;
        u8 reply[128];
        while (text[len] && len < 126) reply[len] = (u8)text[len], len++;
        reply[len++] = '\n';
        send_data(c, reply, len);
    } else if (starts_with(line, "bulk ")) {
        bulk(c, parse_dec(line + 5));
    } else if (starts_with(line, "sink ")) {
        c->sink_left = parse_dec(line + 5);
        c->sink_hash = 0xcbf29ce484222325UL;
    } else if (starts_with(line, "close")) {
        send_op(c, OP_SHUTDOWN, 3);
    } else if (starts_with(line, "reset")) {
        send_op(c, OP_RST, 0);
        say(c->local, "reset\n");
        c->used = 0;
    } else if (starts_with(line, "vanish")) {
        outb(0x64, 0xfe);
    }
}

static void take_data(struct conn *c, const u8 *data, u32 len) {
    for (u32 i = 0; i < len && c->used; i++) {
        if (c->sink_left) {
            c->sink_hash = (c->sink_hash ^ data[i]) * 0x100000001b3UL;
            if (--c->sink_left == 0) {
                say(c->local, "sink hash ");
                put_hex(c->sink_hash);
                put_char('\n');
            }
            continue;
        }
        if (data[i] == '\n' || c->line_len == sizeof c->line - 1) {
            c->line[c->line_len] = 0;
            c->line_len = 0;
            obey(c, c->line);
        } else {
            c->line[c->line_len++] = (char)data[i];
        }
    }
    c->fwd_cnt += len;
    if (c->used && c->fwd_cnt - c->fwd_told >= BUF_ALLOC / 4) send_op(c, OP_CREDIT_UPDATE, 0);
}

static void handle(const struct hdr *h, const u8 *data) {
    if (h->dst_cid != cid || h->src_cid != HOST_CID) {
        put_str("vsock: packet not for this guest\n");
        return;
    }
    struct conn *c = find(h->dst_port, h->src_port);
    if (!c) {
        if (h->op == OP_REQUEST && h->dst_port >= 6000 && h->dst_port < 7000) {
            c = add(h->dst_port, h->src_port, h);
            if (c) {
                send_op(c, OP_RESPONSE, 0);
                say(c->local, "accepted\n");
                return;
            }
        }
        if (h->op != OP_RST) send(0, h->dst_port, h->src_port, OP_RST, 0, 0, 0);
        return;
    }
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case OP_RW:
        take_data(c, data, h->len);
        break;
    case OP_SHUTDOWN:
        say(c->local, "peer shutdown ");
        put_dec(h->flags);
        put_char('\n');
        if (h->flags == 3) {
            send_op(c, OP_RST, 0);
            c->used = 0;
        }
        break;
    case OP_RESPONSE:
        c->connecting = 0;
        break;
    case OP_RST:
        if (!c->connecting) say(c->local, "closed\n");
        c->used = 0;
        break;
    case OP_CREDIT_REQUEST:
        send_op(c, OP_CREDIT_UPDATE, 0);
        break;
    default:
        break;
    }
}

static void post_rx(u16 i) {
    rx.descs[i] = (struct desc){(u64)rx_buffers[i], HDR + BUF, D_WRITE, 0};
    make_available(0, &rx, i);
}

/* Handles every packet the device has put in the receive queue. */
static void poll_rx(void) {
    while (*(volatile u16 *)&rx.used.idx != rx.used_seen) {
        barrier();
        u32 slot = rx.used_seen % QSIZE;
        u16 head = (u16)rx.used.ring[slot].id % QSIZE;
        u32 got = rx.used.ring[slot].len;
        rx.used_seen++;
        const struct hdr *h = (const struct hdr *)rx_buffers[head];
        if (got >= HDR && h->len <= got - HDR) handle(h, rx_buffers[head] + HDR);
        post_rx(head);
    }
}

/* Connects guest port `local` to host port `port`. */
static struct conn *connect(u32 local, u32 port) {
    struct hdr none = {0};
    struct conn *c = add(local, port, &none);
    c->connecting = 1;
    send_op(c, OP_REQUEST, 0);
    while (c->used && c->connecting) poll_rx();
    say(port, c->used ? "connected\n" : "refused\n");
    return c->used ? c : 0;
}

void guest_main(int kind, u64 info) {
    (void)kind;
    (void)info;
    if (REG(BASE, MAGIC) != 0x74726976 || REG(BASE, VERSION) != 2 || REG(BASE, DEVICE_ID) != 19) {
        put_str("vsock: no virtio 1.x vsock device at the first window\n");
        outb(0x64, 0xfe);
    }
    REG(BASE, STATUS) = 0;
    REG(BASE, STATUS) = S_ACK | S_DRIVER;
    REG(BASE, DRIVER_FEATURES_SEL) = 0;
    REG(BASE, DRIVER_FEATURES) = 0;
    REG(BASE, DRIVER_FEATURES_SEL) = 1;
    REG(BASE, DRIVER_FEATURES) = 1; /* VIRTIO_F_VERSION_1 */
    REG(BASE, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK;
    setup_queue(0, &rx);
    setup_queue(1, &tx);
    setup_queue(2, &ev);
    REG(BASE, STATUS) = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;
    cid = read64(BASE + CONFIG);
    put_str("vsock: cid ");
    put_dec(cid);
    put_char('\n');
    for (u16 i = 0; i < QSIZE; i++) post_rx(i);
    ev.descs[0] = (struct desc){(u64)ev_buffer, sizeof ev_buffer, D_WRITE, 0};
    make_available(2, &ev, 0);

    struct conn *c = connect(1024, 5000);
    if (c) {
        const char *hello = "rvmm-vsock-guest-to-host\n";
        u32 len = 0;
        while (hello[len]) len++;
        send_data(c, (const u8 *)hello, len);
    }
    for (;;) poll_rx();
}
