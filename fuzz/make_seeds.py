#!/usr/bin/env python3
"""Writes the seed inputs of the block_request fuzz target (one well-formed
request of each type), of net_queues (a frame to send and receive
buffers) and of vsock_queues (a guest REQUEST and RW, receive buffers),
laid out as the targets expect (see their headers)."""
import os
import struct

DESC, AVAIL, USED, HEADER, DATA, STATUS = 0x100, 0x200, 0x300, 0x400, 0x600, 0x900
NEXT, WRITE = 1, 2


def seed(kind, sector, data_len, device_writes, payload=b""):
    mem = bytearray(0xa00)
    chain = [(HEADER, 16, NEXT)]
    if data_len:
        chain.append((DATA, data_len, NEXT | (WRITE if device_writes else 0)))
    chain.append((STATUS, 1, WRITE))
    for i, (addr, length, flags) in enumerate(chain):
        nxt = i + 1 if flags & NEXT else 0
        struct.pack_into("<QIHH", mem, DESC + 16 * i, addr, length, flags, nxt)
    struct.pack_into("<HHH", mem, AVAIL, 0, 1, 0)  # flags, idx, ring[0]
    struct.pack_into("<IIQ", mem, HEADER, kind, 0, sector)
    mem[DATA:DATA + len(payload)] = payload
    head = struct.pack("<HIIIB", 8, DESC, AVAIL, USED, 1)
    notify = struct.pack("<BI", 0x50 // 4, 0)  # one extra QueueNotify write
    return head + notify + bytes(mem)


seeds = {
    "read": seed(0, 1, 512, True),
    "write": seed(1, 2, 512, False, b"\x5a" * 512),
    "flush": seed(4, 0, 0, False),
    "get_id": seed(8, 0, 20, True),
    "discard": seed(11, 0, 16, False, struct.pack("<QII", 4, 2, 0)),
    "write_zeroes": seed(13, 0, 16, False, struct.pack("<QII", 8, 1, 1)),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "block_request")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


def net_seed():
    """Receive buffers at 0x1000.., one frame to send at 0x2000."""
    rx_desc, rx_avail, rx_used = 0x100, 0x200, 0x300
    tx_desc, tx_avail, tx_used = 0x400, 0x500, 0x600
    mem = bytearray(0x3000)
    for i in range(4):
        struct.pack_into("<QIHH", mem, rx_desc + 16 * i, 0x1000 + 0x400 * i, 0x400, WRITE, 0)
    struct.pack_into("<HH4H", mem, rx_avail, 0, 4, 0, 1, 2, 3)
    struct.pack_into("<QIHH", mem, tx_desc, 0x2000, 12 + 60, 0, 0)
    struct.pack_into("<HHH", mem, tx_avail, 0, 1, 0)
    head = struct.pack("<HIII", 8, rx_desc, rx_avail, rx_used)
    head += struct.pack("<HIII", 8, tx_desc, tx_avail, tx_used) + bytes([2])
    # Notify the receive queue (with a 100-byte frame from the tap) and the
    # transmit queue.
    ops = struct.pack("<BI", 0x50 // 4, 100) + struct.pack("<BI", 0x50 // 4, 1)
    return head + ops + bytes(mem)


out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "net_queues")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "frame_each_way"), "wb") as f:
    f.write(net_seed())


def vsock_seed():
    """Receive buffers at 0x1000..; a REQUEST to host port 5000 and data."""
    rx_desc, rx_avail, rx_used = 0x100, 0x200, 0x300
    tx_desc, tx_avail, tx_used = 0x400, 0x500, 0x600
    mem = bytearray(0x3000)
    for i in range(4):
        struct.pack_into("<QIHH", mem, rx_desc + 16 * i, 0x1000 + 0x400 * i, 0x400, WRITE, 0)
    struct.pack_into("<HH4H", mem, rx_avail, 0, 4, 0, 1, 2, 3)

    def packet(at, op, payload=b""):
        # src_cid, dst_cid, src_port, dst_port, len, type, op, flags, buf_alloc, fwd_cnt
        struct.pack_into("<QQIIIHHIII", mem, at, 3, 2, 1024, 5000, len(payload), 1, op, 0, 65536, 0)
        mem[at + 44:at + 44 + len(payload)] = payload
        return 44 + len(payload)

    struct.pack_into("<QIHH", mem, tx_desc, 0x2000, packet(0x2000, 1), 0, 0)
    struct.pack_into("<QIHH", mem, tx_desc + 16, 0x2400, packet(0x2400, 5, b"hello\n"), 0, 0)
    struct.pack_into("<HH2H", mem, tx_avail, 0, 2, 0, 1)
    head = struct.pack("<HIII", 8, rx_desc, rx_avail, rx_used)
    head += struct.pack("<HIII", 8, tx_desc, tx_avail, tx_used) + bytes([2])
    # Notify the transmit queue, then a host program connects to port 6000.
    ops = struct.pack("<BI", 0x50 // 4, 1 | (1 << 8)) + struct.pack("<BI", 0x50 // 4, 6000 << 24 & 0xffffffff)
    return head + ops + bytes(mem)


out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "vsock_queues")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "request_and_data"), "wb") as f:
    f.write(vsock_seed())
