//! The network device on real guest memory and a datagram socket standing
//! in for the tap (which carries the 12-byte header before each frame, as a
//! tap with IFF_VNET_HDR does): frames both ways, offloads, and what a
//! hostile guest can get wrong.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use vm_memory::{Address, Bytes, GuestAddress};

use super::*;

const MEM_SIZE: usize = 4 << 20;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x3000;
const USED_RING: u64 = 0x4000;
const BUFFERS: u64 = 0x10_0000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
const MAC: [u8; 6] = [0x06, 0x72, 0x76, 0x6d, 0x00, 0x01];

/// The device, one of its queues as a guest set it up, and the host's end
/// of the "tap".
struct Setup {
    net: Net,
    mem: GuestMemoryMmap,
    queue: Queue,
    host: UnixDatagram,
    avail_idx: u16,
}

impl Setup {
    fn new() -> Self {
        Self::with(None)
    }

    /// A card on a tap with offloads; what it is told to set lands in `calls`.
    fn with_offloads(calls: &Arc<Mutex<Vec<u64>>>) -> Self {
        let calls = calls.clone();
        Self::with(Some(Box::new(move |acked| {
            calls.lock().unwrap().push(acked);
            Ok(())
        })))
    }

    fn with(set_offloads: Option<SetOffloads>) -> Self {
        let (device_end, host) = UnixDatagram::pair().unwrap();
        device_end.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        let tap = File::from(std::os::fd::OwnedFd::from(device_end));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_ready(true);
        Setup {
            net: Net::new(tap, MAC, set_offloads),
            mem,
            queue,
            host,
            avail_idx: 0,
        }
    }

    fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        crate::virtio::write_test_descriptor(
            &self.mem,
            DESC_TABLE,
            index,
            (addr, len, flags, next),
        );
    }

    fn make_available(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    fn process(&mut self, index: usize) -> Served {
        self.net.process_queue(index, &mut self.queue, &self.mem)
    }

    /// The used ring's entries so far: (descriptor head, length written).
    fn used(&self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
        (0..u64::from(idx))
            .map(|i| {
                let at = GuestAddress(USED_RING + 4 + 8 * i);
                (
                    self.mem.read_obj(at).unwrap(),
                    self.mem.read_obj(at.unchecked_add(4)).unwrap(),
                )
            })
            .collect()
    }

    fn host_frames(&self) -> Vec<Vec<u8>> {
        let mut frames = vec![];
        let mut buf = [0u8; 70000];
        while let Ok(n) = self.host.recv(&mut buf) {
            frames.push(buf[..n].to_vec());
        }
        frames
    }
}

/// A frame from the tap: a header with `flags` and `gso_type`, then `frame`.
fn from_tap(flags: u8, gso_type: u8, frame: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; NET_HDR_LEN];
    bytes[0] = flags;
    bytes[1] = gso_type;
    bytes.extend_from_slice(frame);
    bytes
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn config_space_holds_the_mac_and_link_up() {
    let s = Setup::new();
    let mut config = [0u8; 8];
    s.net.read_config(0, &mut config);
    assert_eq!(config[..6], MAC);
    assert_eq!(u16::from_le_bytes([config[6], config[7]]), 1);
    assert_ne!(s.net.features() & (1 << VIRTIO_NET_F_MAC), 0);
    assert_eq!(
        s.net.features() & OFFLOAD_FEATURES,
        0,
        "no offloads without a tap that has them"
    );
    let calls = Arc::new(Mutex::new(Vec::new()));
    let s = Setup::with_offloads(&calls);
    assert_eq!(s.net.features() & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
}

#[test]
fn a_transmitted_frame_reaches_the_tap_with_its_header() {
    let mut s = Setup::new();
    let payload = frame(1000, 3);
    // Header and frame split over two descriptors, as Linux may send them.
    s.mem
        .write_slice(&[0xaa; NET_HDR_LEN], GuestAddress(BUFFERS))
        .unwrap();
    s.mem
        .write_slice(&payload, GuestAddress(BUFFERS + 0x1000))
        .unwrap();
    s.write_desc(0, BUFFERS, NET_HDR_LEN as u32, F_NEXT, 1);
    s.write_desc(1, BUFFERS + 0x1000, 1000, 0, 0);
    s.make_available(0);
    let served = s.process(TX_QUEUE);
    assert!(served.notify_guest && !served.more_pending);
    let mut expected = vec![0xaa; NET_HDR_LEN];
    expected.extend(&payload);
    assert_eq!(
        s.host_frames(),
        vec![expected],
        "the header carries the guest's offloads"
    );
    assert_eq!(s.used(), vec![(0, 0)]);
}

#[test]
fn a_frame_from_the_tap_fills_the_next_receive_buffer() {
    let mut s = Setup::new();
    let payload = frame(1514, 9);
    // What the tap leaves in num_buffers is not the guest's concern.
    let mut sent = from_tap(0, 0, &payload);
    sent[NUM_BUFFERS_OFFSET] = 0x77;
    s.host.send(&sent).unwrap();
    // No buffer yet: the frame waits, nothing is used.
    assert!(!s.process(RX_QUEUE).notify_guest);
    assert!(s.used().is_empty());
    s.write_desc(0, BUFFERS, 2048, F_WRITE, 0);
    s.make_available(0);
    assert!(s.process(RX_QUEUE).notify_guest);
    let total = NET_HDR_LEN + payload.len();
    assert_eq!(s.used(), vec![(0, total as u32)]);
    let mut got = vec![0u8; total];
    s.mem.read_slice(&mut got, GuestAddress(BUFFERS)).unwrap();
    let mut header = [0u8; NET_HDR_LEN];
    header[NUM_BUFFERS_OFFSET] = 1;
    assert_eq!(got[..NET_HDR_LEN], header);
    assert_eq!(got[NET_HDR_LEN..], payload);
}

#[test]
fn receive_buffers_too_small_or_read_only_drop_their_frame_and_the_next_one_arrives() {
    let mut s = Setup::new();
    s.host.send(&from_tap(0, 0, &frame(1500, 1))).unwrap();
    s.host.send(&from_tap(0, 0, &frame(60, 2))).unwrap();
    s.host.send(&from_tap(0, 0, &frame(61, 3))).unwrap();
    s.write_desc(0, BUFFERS, 100, F_WRITE, 0);
    s.make_available(0);
    // A device-readable buffer is no receive buffer either.
    s.write_desc(1, BUFFERS + 0x1000, 2048, 0, 0);
    s.make_available(1);
    s.write_desc(2, BUFFERS + 0x2000, 2048, F_WRITE, 0);
    s.make_available(2);
    s.process(RX_QUEUE);
    assert_eq!(
        s.used(),
        vec![(0, 0), (1, 0), (2, (NET_HDR_LEN + 61) as u32)]
    );
}

#[test]
fn hostile_transmit_chains_are_returned_and_never_sent() {
    let mut s = Setup::new();
    // Indirect (not offered), outside guest memory, a loop, too long, and
    // shorter than the header.
    s.write_desc(0, BUFFERS, 16, F_INDIRECT, 0);
    s.write_desc(1, MEM_SIZE as u64 - 8, 64, 0, 0);
    s.write_desc(2, BUFFERS, 64, F_NEXT, 3);
    s.write_desc(3, BUFFERS, 64, F_NEXT, 2);
    s.write_desc(4, BUFFERS, (NET_HDR_LEN + MAX_FRAME_LEN + 1) as u32, 0, 0);
    s.write_desc(5, BUFFERS, NET_HDR_LEN as u32, 0, 0);
    s.write_desc(6, BUFFERS, 64, F_NEXT, 999);
    for head in 0..7 {
        s.make_available(head);
    }
    s.process(TX_QUEUE);
    assert!(s.host_frames().is_empty());
    let heads: Vec<u32> = s.used().iter().map(|u| u.0).collect();
    assert_eq!(heads, (0..7).collect::<Vec<u32>>());
}

#[test]
fn one_notification_serves_a_bounded_number_of_frames() {
    let mut s = Setup::new();
    s.mem
        .write_slice(&frame(100, 0), GuestAddress(BUFFERS))
        .unwrap();
    for head in 0..200 {
        s.write_desc(head, BUFFERS, 100, 0, 0);
        s.make_available(head);
    }
    let served = s.process(TX_QUEUE);
    assert!(served.more_pending);
    assert_eq!(s.used().len(), REQUESTS_PER_NOTIFICATION);
    while s.process(TX_QUEUE).more_pending {}
    assert_eq!(s.used().len(), 200);
    assert_eq!(s.host_frames().len(), 200);
}

#[test]
fn a_full_tap_drops_frames_instead_of_blocking() {
    let mut s = Setup::new();
    s.mem
        .write_slice(&frame(1000, 0), GuestAddress(BUFFERS))
        .unwrap();
    // Nobody reads the host end: its queue fills, the device goes on.
    for round in 0..20u16 {
        for i in 0..100u16 {
            let head = (round * 100 + i) % QUEUE_SIZE;
            s.write_desc(head, BUFFERS, 1000, 0, 0);
            s.make_available(head);
        }
        while s.process(TX_QUEUE).more_pending {}
    }
    assert!(s.net.tx_dropped > 0);
}

#[test]
fn the_tap_is_told_the_guests_offloads_on_the_next_turn_and_reset_clears_them() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut s = Setup::with_offloads(&calls);
    let acked = VIRTIO_F_VERSION_1 | OFFLOAD_FEATURES;
    // On the vCPU thread: only recorded.
    s.net.activate(acked);
    assert!(calls.lock().unwrap().is_empty());
    s.process(RX_QUEUE);
    s.process(TX_QUEUE);
    assert_eq!(*calls.lock().unwrap(), vec![acked], "told once");
    s.net.reset();
    assert_eq!(
        *calls.lock().unwrap(),
        vec![acked, 0],
        "a reset device takes no offloads"
    );
}

#[test]
fn frames_that_need_offloads_the_guest_did_not_take_are_dropped() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let mut s = Setup::with_offloads(&calls);
    let needs_csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let tso4 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    let udp = VIRTIO_NET_HDR_GSO_UDP as u8;
    let ecn = VIRTIO_NET_HDR_GSO_ECN as u8;
    for i in 0..4u16 {
        s.write_desc(i, BUFFERS + 0x2_0000 * u64::from(i), 0x2_0000, F_WRITE, 0);
        s.make_available(i);
    }
    // No offloads negotiated: a partial checksum and a TSO segment are
    // dropped, a plain frame arrives.
    s.host
        .send(&from_tap(needs_csum, 0, &frame(100, 1)))
        .unwrap();
    s.host
        .send(&from_tap(needs_csum, tso4, &frame(9000, 2)))
        .unwrap();
    s.host.send(&from_tap(0, 0, &frame(101, 3))).unwrap();
    s.process(RX_QUEUE);
    assert_eq!(s.used(), vec![(0, (NET_HDR_LEN + 101) as u32)]);
    // With checksums and TSO4 negotiated, those arrive; UDP segmentation
    // (never offered) and ECN (not taken) still do not.
    s.net
        .activate(VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4);
    s.host
        .send(&from_tap(needs_csum, udp, &frame(3000, 4)))
        .unwrap();
    s.host
        .send(&from_tap(needs_csum, tso4 | ecn, &frame(3000, 5)))
        .unwrap();
    s.host
        .send(&from_tap(needs_csum, 0, &frame(102, 6)))
        .unwrap();
    s.host
        .send(&from_tap(needs_csum, tso4, &frame(60000, 7)))
        .unwrap();
    s.process(RX_QUEUE);
    let got = s.used();
    assert_eq!(
        got,
        vec![
            (0, (NET_HDR_LEN + 101) as u32),
            (1, (NET_HDR_LEN + 102) as u32),
            (2, (NET_HDR_LEN + 60000) as u32)
        ]
    );
    // The header reaches the guest as the tap wrote it.
    let mut header = [0u8; NET_HDR_LEN];
    s.mem
        .read_slice(&mut header, GuestAddress(BUFFERS + 0x4_0000))
        .unwrap();
    assert_eq!(
        (header[0], header[1], header[NUM_BUFFERS_OFFSET]),
        (needs_csum, tso4, 1)
    );
}

#[test]
fn a_flood_of_frames_the_guest_cannot_take_is_dropped_in_bounded_rounds() {
    let mut s = Setup::new();
    for _ in 0..200 {
        s.host
            .send(&from_tap(
                VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
                0,
                &frame(60, 0),
            ))
            .unwrap();
    }
    s.host.send(&from_tap(0, 0, &frame(61, 1))).unwrap();
    s.write_desc(0, BUFFERS, 2048, F_WRITE, 0);
    s.make_available(0);
    assert!(
        s.process(RX_QUEUE).more_pending,
        "200 drops are more than a round"
    );
    while s.process(RX_QUEUE).more_pending {}
    assert_eq!(s.used(), vec![(0, (NET_HDR_LEN + 61) as u32)]);
}
