//! virtio-net over a tap device: each frame the guest sends is written to
//! the tap, each frame read from the tap goes into the next receive buffer
//! the guest posted. Any descriptor that carries one Ethernet frame per
//! read and write, behind the 12-byte virtio-net header, will do (a tap
//! opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a header size of 12,
//! or a datagram socket in the tests); it must be non-blocking.
//!
//! The header passes through both ways, so checksum and segmentation
//! offloads work end to end where the tap allows them: the guest may send
//! partially checksummed frames and TSO segments of up to 64 KiB (the host
//! kernel finishes them), and, once it has negotiated GUEST_CSUM and
//! GUEST_TSO, the tap is told (on the event loop, through `SetOffloads`) to
//! hand it such frames too. A frame from the tap that needs an offload the
//! guest did not take is dropped. A frame the tap cannot take at once is
//! dropped, as a NIC with a full queue would.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};

use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestAddress;

use super::{
    check_chain, pop_or_rearm, read_config_bytes, GuestMemoryMmap, Served, VirtioDevice,
    REQUESTS_PER_NOTIFICATION, VIRTIO_F_VERSION_1,
};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`: what precedes every frame in a buffer.
pub const NET_HDR_LEN: usize = 12;
/// The largest frame either way: a 64 KiB TSO segment with its Ethernet
/// (and VLAN) header, with room to spare.
pub const MAX_FRAME_LEN: usize = 65562;
/// Where num_buffers sits in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
const CONFIG_SIZE: usize = 8;

/// Tells the tap which offloaded frames it may hand the guest, given the
/// features the guest acknowledged (the `GUEST_*` ones matter).
pub type SetOffloads = Box<dyn FnMut(u64) -> std::io::Result<()> + Send>;

/// The offloads offered when the tap has them: checksums and TCP
/// segmentation (with ECN) both ways.
pub const OFFLOAD_FEATURES: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_ECN
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_HOST_ECN;

enum Fetch {
    Frame,
    Empty,
    Later,
}

/// One network card.
pub struct Net {
    tap: File,
    set_offloads: Option<SetOffloads>,
    /// What the guest's driver acknowledged, and whether the tap has yet to
    /// be told of it.
    acked: u64,
    offloads_stale: bool,
    config: [u8; CONFIG_SIZE],
    /// A frame read from the tap that waits for a receive buffer: header
    /// space, then the frame.
    rx_frame: Vec<u8>,
    rx_len: Option<usize>,
    tx_frame: Vec<u8>,
    /// Frames dropped because the tap was full, for the log.
    tx_dropped: u64,
}

impl Net {
    /// A card with address `mac` on `tap`, a non-blocking descriptor that
    /// carries one frame (behind its header) per read and write. With
    /// `set_offloads`, the tap takes and gives offloaded frames, and the
    /// offloads are offered.
    pub fn new(tap: File, mac: [u8; 6], set_offloads: Option<SetOffloads>) -> Self {
        let mut config = [0u8; CONFIG_SIZE];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Self {
            tap,
            set_offloads,
            acked: 0,
            offloads_stale: false,
            config,
            rx_frame: vec![0; NET_HDR_LEN + MAX_FRAME_LEN],
            rx_len: None,
            tx_frame: vec![0; NET_HDR_LEN + MAX_FRAME_LEN],
            tx_dropped: 0,
        }
    }

    /// Reads the next frame the guest can take from the tap, unless one is
    /// waiting already. Frames it cannot take are dropped, a bounded number
    /// per call: `Later` says more wait for another round.
    fn fetch_frame(&mut self) -> Fetch {
        if self.rx_len.is_some() {
            return Fetch::Frame;
        }
        for _ in 0..REQUESTS_PER_NOTIFICATION {
            match self.tap.read(&mut self.rx_frame) {
                Ok(len) if len > NET_HDR_LEN && self.guest_takes(&self.rx_frame[..NET_HDR_LEN]) => {
                    self.rx_len = Some(len - NET_HDR_LEN);
                    return Fetch::Frame;
                }
                Ok(len) => log::debug!(
                    "virtio-net: a {len}-byte frame from the tap that the guest cannot take; dropped"
                ),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Fetch::Empty,
                Err(e) => {
                    log::debug!("virtio-net: cannot read the tap: {e}");
                    return Fetch::Empty;
                }
            }
        }
        Fetch::Later
    }

    /// Moves frames from the tap into the guest's receive buffers.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Served {
        let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
        let mut frames = 0;
        while frames < REQUESTS_PER_NOTIFICATION {
            match self.fetch_frame() {
                Fetch::Frame => {}
                Fetch::Empty => return served(frames, queue, mem, false),
                Fetch::Later => return served(frames, queue, mem, true),
            }
            // The frame waits in `rx_frame` until the guest posts a buffer.
            let Some(chain) = pop_or_rearm(queue, mem) else {
                return served(frames, queue, mem, false);
            };
            let head = chain.head_index();
            let len = self.rx_len.take().unwrap_or(0);
            let buffer = &mut self.rx_frame[..NET_HDR_LEN + len];
            // The tap leaves num_buffers alone; one buffer per frame here.
            buffer[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&1u16.to_le_bytes());
            let written = match check_chain(mem, table, size, head, u32::from(QUEUE_SIZE), u32::MAX)
                .and_then(|_| Writer::new(mem, chain).ok())
            {
                Some(mut writer) if writer.available_bytes() >= buffer.len() => {
                    match writer.write_all(buffer) {
                        Ok(()) => buffer.len() as u32,
                        Err(e) => {
                            log::debug!("virtio-net: cannot fill a receive buffer: {e}");
                            0
                        }
                    }
                }
                // Too small, or not a buffer the device may write: the
                // frame is dropped and the buffer returned unused.
                _ => {
                    log::debug!("virtio-net: receive buffer {head} cannot take a {len}-byte frame");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, written) {
                log::debug!("virtio-net: cannot return receive buffer {head}: {e}");
                return served(frames, queue, mem, false);
            }
            frames += 1;
        }
        served(frames, queue, mem, true)
    }

    /// Sends the frames the guest queued to the tap.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Served {
        let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
        let mut frames = 0;
        while frames < REQUESTS_PER_NOTIFICATION {
            let Some(chain) = pop_or_rearm(queue, mem) else {
                return served(frames, queue, mem, false);
            };
            let head = chain.head_index();
            let limit = self.tx_frame.len() as u64;
            let len = check_chain(mem, table, size, head, u32::from(QUEUE_SIZE), u32::MAX)
                .filter(|&total| total <= limit)
                .and_then(|_| Reader::new(mem, chain).ok())
                .and_then(|mut reader| {
                    let len = reader.available_bytes();
                    reader
                        .read_exact(&mut self.tx_frame[..len])
                        .ok()
                        .map(|()| len)
                });
            match len {
                Some(len) if len > NET_HDR_LEN => self.send(len),
                _ => log::debug!("virtio-net: transmit request {head} refused"),
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                log::debug!("virtio-net: cannot return transmit request {head}: {e}");
                return served(frames, queue, mem, false);
            }
            frames += 1;
        }
        served(frames, queue, mem, true)
    }

    fn send(&mut self, len: usize) {
        // The header goes too: it carries the guest's offloads.
        let frame = &self.tx_frame[..len];
        // A tap takes a frame whole or not at all.
        match self.tap.write(frame) {
            Ok(n) if n == frame.len() => {}
            Ok(n) => log::debug!("virtio-net: the tap took {n} of {} bytes", frame.len()),
            Err(e) => {
                if self.tx_dropped == 0 {
                    log::warn!(
                        "virtio-net: the tap took no frame ({e}); dropping frames it cannot take"
                    );
                }
                self.tx_dropped += 1;
            }
        }
    }
}

impl Net {
    /// Whether the guest negotiated what the frame behind `header` needs: a
    /// checksum to finish (GUEST_CSUM), a segmentation to do (GUEST_TSO4 or 6,
    /// with GUEST_ECN for ECN).
    fn guest_takes(&self, header: &[u8]) -> bool {
        let has = |bit: u32| self.acked & (1 << bit) != 0;
        let (flags, gso) = (header[0], header[1]);
        let csum_ok =
            u32::from(flags) & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 || has(VIRTIO_NET_F_GUEST_CSUM);
        let ecn_ok = u32::from(gso) & VIRTIO_NET_HDR_GSO_ECN == 0 || has(VIRTIO_NET_F_GUEST_ECN);
        let gso_ok = match u32::from(gso) & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_GUEST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_GUEST_TSO6),
            _ => false,
        };
        csum_ok && ecn_ok && gso_ok
    }

    /// Tells the tap what the guest now takes, once after each change.
    fn update_offloads(&mut self) {
        if !std::mem::take(&mut self.offloads_stale) {
            return;
        }
        if let Some(set) = self.set_offloads.as_mut() {
            if let Err(e) = set(self.acked) {
                log::warn!("virtio-net: the tap refused the guest's offloads ({e}); frames that need them are dropped");
            }
        }
    }
}

fn served(frames: usize, queue: &mut Queue, mem: &GuestMemoryMmap, more_pending: bool) -> Served {
    Served {
        notify_guest: frames > 0 && queue.needs_notification(mem).unwrap_or(true),
        more_pending,
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let offloads = if self.set_offloads.is_some() {
            OFFLOAD_FEATURES
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS | offloads
    }

    fn activate(&mut self, features: u64) {
        self.acked = features;
        self.offloads_stale = true;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Served {
        self.update_offloads();
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => Served::default(),
        }
    }

    fn reset(&mut self) {
        self.rx_len = None;
        if self.acked & OFFLOAD_FEATURES != 0 {
            self.acked = 0;
            self.offloads_stale = true;
            self.update_offloads();
        }
        self.acked = 0;
    }
}

#[cfg(test)]
mod tests;
