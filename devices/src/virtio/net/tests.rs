//! The network device on real guest memory and a datagram socket standing
//! in for the tap: frames both ways, and what a hostile guest can get wrong.

use std::os::unix::net::UnixDatagram;

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
            net: Net::new(tap, MAC),
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
        s.net.features() & (1 << VIRTIO_NET_F_CSUM),
        0,
        "no offloads"
    );
}

#[test]
fn a_transmitted_frame_reaches_the_tap_without_its_header() {
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
    assert_eq!(s.host_frames(), vec![payload]);
    assert_eq!(s.used(), vec![(0, 0)]);
}

#[test]
fn a_frame_from_the_tap_fills_the_next_receive_buffer() {
    let mut s = Setup::new();
    let payload = frame(1514, 9);
    s.host.send(&payload).unwrap();
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
    s.host.send(&frame(1500, 1)).unwrap();
    s.host.send(&frame(60, 2)).unwrap();
    s.host.send(&frame(61, 3)).unwrap();
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
