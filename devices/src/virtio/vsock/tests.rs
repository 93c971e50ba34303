//! The vsock device on real guest memory, driven as Linux's driver drives
//! it, with real Unix sockets on the host side: connections both ways, flow
//! control, closes and resets, and what a hostile guest can get wrong.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::packet::*;
use super::*;
use crate::virtio::write_test_descriptor;

const GUEST_CID: u32 = 3;
const MEM_SIZE: usize = 16 << 20;
/// Each queue's descriptor table, avail ring and used ring.
const QUEUE_AREAS: [u64; 3] = [0x1_0000, 0x2_0000, 0x3_0000];
const RX_BUFFERS: u64 = 0x10_0000;
const TX_BUFFERS: u64 = 0x80_0000;
/// Linux 6.1's receive buffers: a header descriptor and 4 KiB of data.
const RX_DATA: u32 = 4096;
const SLOT: u64 = 0x1_2000;
const GUEST_BUF_ALLOC: u32 = 64 * 1024;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

struct Driver {
    vsock: Vsock,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    avail_idx: [u16; 3],
    used_seen: [u16; 3],
    /// What the guest has consumed of what it received: its fwd_cnt.
    fwd_cnt: u32,
    dir: PathBuf,
    uds: PathBuf,
}

impl Driver {
    fn new(name: &str) -> Driver {
        Driver::with_rx_buffers(name, 16)
    }

    /// A driver that posted `rx_buffers` receive buffers (slots 0, 1, ...).
    fn with_rx_buffers(name: &str, rx_buffers: u16) -> Driver {
        let dir = std::env::temp_dir().join(format!("rvmm-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        listener.set_nonblocking(true).unwrap();
        let vsock = Vsock::new(GUEST_CID, listener, uds.clone()).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let queues = QUEUE_AREAS
            .iter()
            .map(|&area| {
                let mut q = Queue::new(QUEUE_SIZE).unwrap();
                q.set_desc_table_address(Some(area as u32), Some(0));
                q.set_avail_ring_address(Some((area + 0x1000) as u32), Some(0));
                q.set_used_ring_address(Some((area + 0x2000) as u32), Some(0));
                q.set_ready(true);
                q
            })
            .collect();
        let mut driver = Driver {
            vsock,
            mem,
            queues,
            avail_idx: [0; 3],
            used_seen: [0; 3],
            fwd_cnt: 0,
            dir,
            uds,
        };
        for slot in 0..rx_buffers {
            driver.post_rx(slot);
        }
        driver
    }

    fn host_path(&self, port: u32) -> PathBuf {
        self.dir.join(format!("v.sock_{port}"))
    }

    fn desc(&self, queue: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        write_test_descriptor(
            &self.mem,
            QUEUE_AREAS[queue],
            index,
            (addr, len, flags, next),
        );
    }

    fn make_available(&mut self, queue: usize, head: u16) {
        let avail = QUEUE_AREAS[queue] + 0x1000;
        let slot = u64::from(self.avail_idx[queue] % QUEUE_SIZE);
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx[queue] = self.avail_idx[queue].wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx[queue], GuestAddress(avail + 2))
            .unwrap();
    }

    /// Receive buffer `slot` (descriptors 2*slot and 2*slot+1).
    fn post_rx(&mut self, slot: u16) {
        let at = RX_BUFFERS + u64::from(slot) * SLOT;
        let (head, data) = (2 * slot, 2 * slot + 1);
        self.desc(
            RX_QUEUE,
            head,
            at,
            HEADER_LEN as u32,
            F_WRITE | F_NEXT,
            data,
        );
        self.desc(RX_QUEUE, data, at + 0x100, RX_DATA, F_WRITE, 0);
        self.make_available(RX_QUEUE, head);
    }

    fn header(&self, op: u16, src_port: u32, dst_port: u32, len: usize) -> Header {
        Header {
            src_cid: u64::from(GUEST_CID),
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len: len as u32,
            kind: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Transmits `header` and `payload` as Linux does (two descriptors).
    fn send(&mut self, header: Header, payload: &[u8]) -> Served {
        let slot = self.avail_idx[TX_QUEUE] % 64;
        let at = TX_BUFFERS + u64::from(slot) * 0x1_1000;
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(at))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(at + 0x100))
            .unwrap();
        let (head, data) = (2 * slot, 2 * slot + 1);
        if payload.is_empty() {
            self.desc(TX_QUEUE, head, at, HEADER_LEN as u32, 0, 0);
        } else {
            self.desc(TX_QUEUE, head, at, HEADER_LEN as u32, F_NEXT, data);
            self.desc(TX_QUEUE, data, at + 0x100, payload.len() as u32, 0, 0);
        }
        self.make_available(TX_QUEUE, head);
        self.serve(TX_QUEUE)
    }

    fn send_op(&mut self, op: u16, src_port: u32, dst_port: u32) -> Served {
        let header = self.header(op, src_port, dst_port, 0);
        self.send(header, &[])
    }

    fn serve(&mut self, index: usize) -> Served {
        self.vsock
            .process_queues(index, &mut self.queues, &self.mem)
    }

    /// What the event loop does when the host side has work.
    fn host_work(&mut self) -> Served {
        self.serve(RX_QUEUE)
    }

    /// Packets the device put in the receive queue since the last call
    /// (their buffers posted again), consumed at once.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let used = QUEUE_AREAS[RX_QUEUE] + 0x2000;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let mut packets = Vec::new();
        while self.used_seen[RX_QUEUE] != idx {
            let at = used + 4 + 8 * u64::from(self.used_seen[RX_QUEUE] % QUEUE_SIZE);
            self.used_seen[RX_QUEUE] = self.used_seen[RX_QUEUE].wrapping_add(1);
            let head: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            let slot = (head / 2) as u16;
            let buffer = RX_BUFFERS + u64::from(slot) * SLOT;
            assert!(len as usize >= HEADER_LEN, "used length {len}");
            let mut bytes = [0u8; HEADER_LEN];
            self.mem
                .read_slice(&mut bytes, GuestAddress(buffer))
                .unwrap();
            let header = Header::parse(&bytes);
            assert_eq!(header.len as usize, len as usize - HEADER_LEN);
            let mut payload = vec![0u8; header.len as usize];
            self.mem
                .read_slice(&mut payload, GuestAddress(buffer + 0x100))
                .unwrap();
            self.fwd_cnt += header.len;
            packets.push((header, payload));
            self.post_rx(slot);
        }
        packets
    }

    /// The one packet received now.
    fn received_one(&mut self) -> (Header, Vec<u8>) {
        let mut packets = self.received();
        assert_eq!(packets.len(), 1, "{packets:?}");
        packets.remove(0)
    }

    /// Connects guest port `guest_port` to host port `host_port`, where a
    /// host listener takes it; returns the host's end.
    fn guest_connect(&mut self, guest_port: u32, host_port: u32) -> (UnixListener, UnixStream) {
        let listener = UnixListener::bind(self.host_path(host_port)).unwrap();
        self.send_op(OP_REQUEST, guest_port, host_port);
        let (header, _) = self.received_one();
        assert_eq!(header.op, OP_RESPONSE);
        assert_eq!((header.src_port, header.dst_port), (host_port, guest_port));
        assert_eq!(header.dst_cid, u64::from(GUEST_CID));
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (listener, stream)
    }

    /// A host program connects and asks for guest port `port`; returns
    /// its stream and the REQUEST the guest got.
    fn host_connect(&mut self, port: u32) -> (UnixStream, Header) {
        let mut host = UnixStream::connect(&self.uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writeln!(host, "CONNECT {port}").unwrap();
        self.host_work();
        let (request, _) = self.received_one();
        assert_eq!(request.op, OP_REQUEST);
        assert_eq!(request.dst_port, port);
        (host, request)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads until EOF (or `limit` bytes); panics on a timeout.
fn read_to_eof(stream: &mut UnixStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("reading the host end: {e} after {} bytes", all.len()),
        }
    }
}

#[test]
fn guest_connection_carries_data_both_ways() {
    let mut d = Driver::new("guest-conn");
    let (_listener, mut host) = d.guest_connect(1025, 5000);

    let header = d.header(OP_RW, 1025, 5000, 5);
    d.send(header, b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    host.write_all(b"world").unwrap();
    d.host_work();
    let (header, payload) = d.received_one();
    assert_eq!(header.op, OP_RW);
    assert_eq!((header.src_port, header.dst_port), (5000, 1025));
    assert_eq!(payload, b"world");
    assert_eq!(header.buf_alloc, CONN_BUF_SIZE);
    assert_eq!(header.fwd_cnt, 5, "the host took 5 bytes of the guest's");
}

#[test]
fn guest_connection_to_a_port_nobody_listens_on_is_reset() {
    let mut d = Driver::new("refused");
    d.send_op(OP_REQUEST, 1025, 5001);
    let (header, _) = d.received_one();
    assert_eq!(header.op, OP_RST);
    assert_eq!((header.src_port, header.dst_port), (5001, 1025));
    assert_eq!(d.vsock.host.connection_count(), 0);
}

#[test]
fn host_connection_gets_ok_and_carries_data_both_ways() {
    let mut d = Driver::new("host-conn");
    let (mut host, request) = d.host_connect(52);
    assert!(request.src_port >= 1 << 30, "{request:?}");
    assert_eq!(request.src_cid, HOST_CID);
    d.send_op(OP_RESPONSE, 52, request.src_port);
    let mut line = [0u8; 64];
    let n = host.read(&mut line).unwrap();
    assert_eq!(
        std::str::from_utf8(&line[..n]).unwrap(),
        format!("OK {}\n", request.src_port)
    );

    host.write_all(b"to the guest").unwrap();
    d.host_work();
    let (header, payload) = d.received_one();
    assert_eq!(
        (header.op, payload.as_slice()),
        (OP_RW, &b"to the guest"[..])
    );

    let header = d.header(OP_RW, 52, request.src_port, 6);
    d.send(header, b"to you");
    let mut got = [0u8; 6];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to you");

    // A second connection gets a port of its own.
    let (_other, second) = d.host_connect(52);
    assert_ne!(second.src_port, request.src_port);
}

#[test]
fn data_sent_with_the_connect_line_waits_until_the_guest_accepts() {
    let mut d = Driver::new("early-data");
    let mut host = UnixStream::connect(&d.uds).unwrap();
    host.write_all(b"CONNECT 7\nearly").unwrap();
    d.host_work();
    let (request, _) = d.received_one();
    assert_eq!(request.op, OP_REQUEST);
    d.send_op(OP_RESPONSE, 7, request.src_port);
    d.host_work();
    let (header, payload) = d.received_one();
    assert_eq!((header.op, payload.as_slice()), (OP_RW, &b"early"[..]));
}

#[test]
fn bad_connect_lines_and_refused_requests_close_the_host_stream() {
    let mut d = Driver::new("bad-lines");
    for line in ["HELLO\n", "CONNECT x\n", "CONNECT 99999999999\n"] {
        let mut host = UnixStream::connect(&d.uds).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        host.write_all(line.as_bytes()).unwrap();
        d.host_work();
        assert!(d.received().is_empty(), "{line:?} reached the guest");
        assert!(read_to_eof(&mut host).is_empty(), "{line:?}");
    }
    // A line that never ends is cut off at its limit.
    let mut host = UnixStream::connect(&d.uds).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(&[b'C'; 100]).unwrap();
    d.host_work();
    assert!(read_to_eof(&mut host).is_empty());

    // The guest has no listener on the port: it answers RST, the host's
    // stream closes without an OK.
    let (mut host, request) = d.host_connect(9);
    d.send_op(OP_RST, 9, request.src_port);
    assert!(read_to_eof(&mut host).is_empty());
    assert_eq!(d.vsock.host.connection_count(), 0);
}

#[test]
fn a_request_the_guest_never_answers_times_out() {
    let mut d = Driver::new("timeout");
    let (mut host, request) = d.host_connect(10);
    std::thread::sleep(muxer::CONNECT_TIMEOUT + Duration::from_millis(100));
    d.host_work();
    let (header, _) = d.received_one();
    assert_eq!((header.op, header.src_port), (OP_RST, request.src_port));
    assert!(read_to_eof(&mut host).is_empty());
}

#[test]
fn host_data_respects_the_guest_credit() {
    let mut d = Driver::new("credit-in");
    let (_listener, mut host) = d.guest_connect(1025, 5000);
    // The guest has room for 6000 bytes.
    let mut header = d.header(OP_CREDIT_UPDATE, 1025, 5000, 0);
    header.buf_alloc = 6000;
    d.send(header, &[]);
    host.write_all(&[7u8; 20000]).unwrap();
    d.host_work();
    let packets = d.received();
    let data: usize = packets
        .iter()
        .filter(|(h, _)| h.op == OP_RW)
        .map(|(h, _)| h.len as usize)
        .sum();
    assert_eq!(data, 6000, "{packets:?}");
    assert!(
        packets.iter().any(|(h, _)| h.op == OP_CREDIT_REQUEST),
        "out of credit, the device asks for more: {packets:?}"
    );
    // The guest read 6000 bytes and says so: 6000 more may come.
    let mut header = d.header(OP_CREDIT_UPDATE, 1025, 5000, 0);
    header.buf_alloc = 6000;
    header.fwd_cnt = 6000;
    d.send(header, &[]);
    d.host_work();
    let more: usize = d.received().iter().map(|(h, _)| h.len as usize).sum();
    assert_eq!(more, 6000);
}

#[test]
fn guest_data_the_host_cannot_take_yet_waits_and_credit_follows() {
    let mut d = Driver::new("credit-out");
    let (_listener, mut host) = d.guest_connect(1025, 5000);
    let chunk = vec![0x5au8; MAX_PAYLOAD];
    // More than the host socket takes at once: the rest waits in rvmm.
    let total = 4 * MAX_PAYLOAD;
    for _ in 0..4 {
        let header = d.header(OP_RW, 1025, 5000, chunk.len());
        d.send(header, &chunk);
    }
    // The host end stays open: only credit updates may tell the guest.
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; total];
        host.read_exact(&mut got).unwrap();
        (got, host)
    });
    let mut fwd_cnt = 0;
    for _ in 0..200 {
        d.host_work();
        for (header, _) in d.received() {
            assert_eq!(header.op, OP_CREDIT_UPDATE);
            fwd_cnt = fwd_cnt.max(header.fwd_cnt);
        }
        if fwd_cnt as usize == total {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (got, _host) = reader.join().unwrap();
    assert!(got.iter().all(|&b| b == 0x5a));
    assert_eq!(
        fwd_cnt as usize, total,
        "the guest was told all went through"
    );
}

#[test]
fn a_guest_that_ignores_its_credit_is_reset() {
    let mut d = Driver::new("overrun");
    let (_listener, mut host) = d.guest_connect(1025, 5000);
    let chunk = vec![1u8; MAX_PAYLOAD];
    // The host never reads: its socket fills, then rvmm's buffer.
    let mut reset = false;
    for _ in 0..64 {
        let header = d.header(OP_RW, 1025, 5000, chunk.len());
        d.send(header, &chunk);
        if d.received().iter().any(|(h, _)| h.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "a guest that sends past its credit must be reset");
    host.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while host.read(&mut buf).is_ok_and(|n| n > 0) {}
    host.set_nonblocking(false).unwrap();
    assert_eq!(host.read(&mut buf).unwrap(), 0, "the host end is closed");
}

#[test]
fn guest_shutdown_closes_the_host_end_after_its_data_and_gets_rst() {
    let mut d = Driver::new("guest-close");
    let (_listener, mut host) = d.guest_connect(1025, 5000);
    let header = d.header(OP_RW, 1025, 5000, 4);
    d.send(header, b"last");
    let mut header = d.header(OP_SHUTDOWN, 1025, 5000, 0);
    header.flags = SHUTDOWN_BOTH;
    d.send(header, &[]);
    let (header, _) = d.received_one();
    assert_eq!(header.op, OP_RST, "Linux waits for RST to finish its close");
    assert_eq!(read_to_eof(&mut host), b"last");
    assert_eq!(d.vsock.host.connection_count(), 0);
}

#[test]
fn guest_half_close_lets_the_host_answer() {
    let mut d = Driver::new("half-close");
    let (_listener, mut host) = d.guest_connect(1025, 5000);
    let header = d.header(OP_RW, 1025, 5000, 8);
    d.send(header, b"question");
    let mut header = d.header(OP_SHUTDOWN, 1025, 5000, 0);
    header.flags = SHUTDOWN_SEND;
    d.send(header, &[]);
    assert_eq!(read_to_eof(&mut host), b"question");
    host.write_all(b"answer").unwrap();
    d.host_work();
    let (header, payload) = d.received_one();
    assert_eq!((header.op, payload.as_slice()), (OP_RW, &b"answer"[..]));
}

#[test]
fn host_close_reaches_the_guest_after_its_data() {
    let mut d = Driver::new("host-close");
    let (_listener, mut host) = d.guest_connect(1025, 5000);
    host.write_all(b"bye").unwrap();
    drop(host);
    d.host_work();
    let packets = d.received();
    let ops: Vec<u16> = packets.iter().map(|(h, _)| h.op).collect();
    assert_eq!(ops, [OP_RW, OP_SHUTDOWN], "{packets:?}");
    assert_eq!(packets[0].1, b"bye");
    assert_eq!(packets[1].0.flags, SHUTDOWN_BOTH);
    // The guest finishes the close.
    d.send_op(OP_RST, 1025, 5000);
    assert_eq!(d.vsock.host.connection_count(), 0);
}

#[test]
fn host_half_close_tells_the_guest_and_the_host_still_reads() {
    let mut d = Driver::new("host-half");
    let (_listener, mut host) = d.guest_connect(1025, 5000);
    host.shutdown(Shutdown::Write).unwrap();
    d.host_work();
    let (header, _) = d.received_one();
    assert_eq!((header.op, header.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    let header = d.header(OP_RW, 1025, 5000, 5);
    d.send(header, b"reply");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"reply");
}

#[test]
fn guest_reset_closes_the_host_end() {
    let mut d = Driver::new("guest-rst");
    let (_listener, mut host) = d.guest_connect(1025, 5000);
    d.send_op(OP_RST, 1025, 5000);
    assert!(read_to_eof(&mut host).is_empty());
    assert!(d.received().is_empty(), "RST is never answered");
}

#[test]
fn device_reset_closes_every_host_end() {
    let mut d = Driver::new("device-reset");
    let (_l1, mut a) = d.guest_connect(1025, 5000);
    let (mut b, _) = d.host_connect(60);
    d.vsock.reset();
    assert!(read_to_eof(&mut a).is_empty());
    assert!(read_to_eof(&mut b).is_empty());
    // The listening socket still takes connections.
    let (_c, request) = d.host_connect(61);
    assert_eq!(request.op, OP_REQUEST);
}

#[test]
fn packets_not_from_this_guest_to_the_host_are_dropped() {
    let mut d = Driver::new("wrong-cid");
    let _listener = UnixListener::bind(d.host_path(5000)).unwrap();
    let mut header = d.header(OP_REQUEST, 1025, 5000, 0);
    header.src_cid = 4;
    d.send(header, &[]);
    let mut header = d.header(OP_REQUEST, 1025, 5000, 0);
    header.dst_cid = 7;
    d.send(header, &[]);
    assert!(d.received().is_empty());
    assert_eq!(d.vsock.host.connection_count(), 0);
}

#[test]
fn unknown_connections_types_and_ops_get_rst() {
    let mut d = Driver::new("unknown");
    // Data for a connection that does not exist.
    let header = d.header(OP_RW, 1025, 5000, 3);
    d.send(header, b"abc");
    // A datagram socket type.
    let mut header = d.header(OP_REQUEST, 1026, 5000, 0);
    header.kind = 2;
    d.send(header, &[]);
    let ports: Vec<(u16, u32)> = d
        .received()
        .iter()
        .map(|(h, _)| (h.op, h.dst_port))
        .collect();
    assert_eq!(ports, [(OP_RST, 1025), (OP_RST, 1026)]);
    // An op that does not exist resets a live connection.
    let (_listener, mut host) = d.guest_connect(1027, 5002);
    d.send_op(99, 1027, 5002);
    assert_eq!(d.received_one().0.op, OP_RST);
    assert!(read_to_eof(&mut host).is_empty());
}

#[test]
fn malformed_chains_are_returned_unused() {
    let mut d = Driver::new("malformed");
    let (_listener, mut host) = d.guest_connect(1025, 5000);
    // A header that claims more payload than the chain has.
    let header = d.header(OP_RW, 1025, 5000, 100);
    d.send(header, b"short");
    // A payload over 64 KiB.
    let big = vec![0u8; MAX_PAYLOAD + 1];
    let header = d.header(OP_RW, 1025, 5000, big.len());
    d.send(header, &big);
    // A chain shorter than a header.
    d.desc(TX_QUEUE, 200, TX_BUFFERS, 10, 0, 0);
    d.make_available(TX_QUEUE, 200);
    // An indirect descriptor, and a chain that loops.
    d.desc(TX_QUEUE, 201, TX_BUFFERS, 16, F_INDIRECT, 0);
    d.make_available(TX_QUEUE, 201);
    d.desc(TX_QUEUE, 202, TX_BUFFERS, 44, F_NEXT, 203);
    d.desc(TX_QUEUE, 203, TX_BUFFERS, 44, F_NEXT, 202);
    d.make_available(TX_QUEUE, 202);
    // A descriptor outside guest memory.
    d.desc(TX_QUEUE, 204, MEM_SIZE as u64 - 8, 44, 0, 0);
    d.make_available(TX_QUEUE, 204);
    d.serve(TX_QUEUE);
    // All were returned, none reached the host.
    let used: u16 = d
        .mem
        .read_obj(GuestAddress(QUEUE_AREAS[TX_QUEUE] + 0x2002))
        .unwrap();
    assert_eq!(used, d.avail_idx[TX_QUEUE]);
    host.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        host.read(&mut buf).map_err(|e| e.kind()),
        Err(ErrorKind::WouldBlock)
    );
}

#[test]
fn unusable_receive_buffers_are_returned_and_the_packet_takes_the_next() {
    let mut d = Driver::with_rx_buffers("bad-rx", 0);
    let at = RX_BUFFERS;
    // Read-only, too small for a header, outside memory, then a good one.
    d.desc(RX_QUEUE, 0, at, 4096, 0, 0);
    d.make_available(RX_QUEUE, 0);
    d.desc(RX_QUEUE, 1, at, 20, F_WRITE, 0);
    d.make_available(RX_QUEUE, 1);
    d.desc(RX_QUEUE, 2, MEM_SIZE as u64 - 16, 4096, F_WRITE, 0);
    d.make_available(RX_QUEUE, 2);
    d.desc(RX_QUEUE, 3, at, 4096, F_WRITE, 0);
    d.make_available(RX_QUEUE, 3);
    d.send_op(OP_REQUEST, 1025, 5999);
    let used = QUEUE_AREAS[RX_QUEUE] + 0x2000;
    let idx: u16 = d.mem.read_obj(GuestAddress(used + 2)).unwrap();
    assert_eq!(idx, 4);
    let entry = |i: u64| -> (u32, u32) {
        let id = d.mem.read_obj(GuestAddress(used + 4 + 8 * i)).unwrap();
        let len = d.mem.read_obj(GuestAddress(used + 8 + 8 * i)).unwrap();
        (id, len)
    };
    assert_eq!([entry(0), entry(1), entry(2)], [(0, 0), (1, 0), (2, 0)]);
    assert_eq!(entry(3), (3, HEADER_LEN as u32));
    let mut bytes = [0u8; HEADER_LEN];
    d.mem.read_slice(&mut bytes, GuestAddress(at)).unwrap();
    assert_eq!(Header::parse(&bytes).op, OP_RST);
}

#[test]
fn a_flood_of_packets_is_served_in_bounded_rounds() {
    let mut d = Driver::new("flood");
    for port in 0..200u32 {
        let slot = d.avail_idx[TX_QUEUE];
        let at = TX_BUFFERS + u64::from(slot) * 64;
        let header = d.header(OP_RW, 2000 + port, 5000, 0);
        d.mem
            .write_slice(&header.to_bytes(), GuestAddress(at))
            .unwrap();
        d.desc(TX_QUEUE, slot, at, HEADER_LEN as u32, 0, 0);
        d.make_available(TX_QUEUE, slot);
    }
    let served = d.serve(TX_QUEUE);
    assert!(served.more_pending, "200 packets are more than one round");
    while d.serve(TX_QUEUE).more_pending {}
    // Every unknown connection was answered, within the bound on queued RSTs.
    let mut resets = 0;
    for _ in 0..20 {
        resets += d.received().len();
        d.host_work();
    }
    assert_eq!(resets, 200);
}
