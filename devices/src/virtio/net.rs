//! virtio-net over a tap device: each frame the guest sends is written to
//! the tap, each frame read from the tap goes into the next receive buffer
//! the guest posted. Any descriptor that carries one Ethernet frame per
//! read and write will do (a tap opened with IFF_TAP | IFF_NO_PI, or a
//! datagram socket in the tests); it must be non-blocking.
//!
//! No offloads are offered, so every frame fits the MTU and the 12-byte
//! virtio-net header carries nothing: it is dropped on the way out and
//! written as zeros (with num_buffers = 1) on the way in. A frame the tap
//! cannot take at once is dropped, as a NIC with a full queue would.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};

use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestAddress;

use super::{
    check_chain, read_config_bytes, GuestMemoryMmap, Served, VirtioDevice,
    REQUESTS_PER_NOTIFICATION, VIRTIO_F_VERSION_1,
};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1`: what precedes every frame in a buffer.
pub const NET_HDR_LEN: usize = 12;
/// The largest frame either way: no offloads, so an MTU of at most 64 KiB.
pub const MAX_FRAME_LEN: usize = 65535;
/// Where num_buffers sits in the header.
const NUM_BUFFERS_OFFSET: usize = 10;
const CONFIG_SIZE: usize = 8;

/// One network card.
pub struct Net {
    tap: File,
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
    /// carries one frame per read and write.
    pub fn new(tap: File, mac: [u8; 6]) -> Self {
        let mut config = [0u8; CONFIG_SIZE];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        Self {
            tap,
            config,
            rx_frame: vec![0; NET_HDR_LEN + MAX_FRAME_LEN],
            rx_len: None,
            tx_frame: vec![0; NET_HDR_LEN + MAX_FRAME_LEN],
            tx_dropped: 0,
        }
    }

    /// Reads the next frame from the tap unless one is waiting already.
    /// False when the tap has none.
    fn fetch_frame(&mut self) -> bool {
        if self.rx_len.is_some() {
            return true;
        }
        match self.tap.read(&mut self.rx_frame[NET_HDR_LEN..]) {
            Ok(len) => {
                self.rx_len = Some(len);
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => {
                log::debug!("virtio-net: cannot read the tap: {e}");
                false
            }
        }
    }

    /// Moves frames from the tap into the guest's receive buffers.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Served {
        let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
        let mut frames = 0;
        while frames < REQUESTS_PER_NOTIFICATION {
            if !self.fetch_frame() {
                return served(frames, queue, mem, false);
            }
            // The frame waits in `rx_frame` until the guest posts a buffer.
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return served(frames, queue, mem, false);
            };
            let head = chain.head_index();
            let len = self.rx_len.take().unwrap_or(0);
            let buffer = &mut self.rx_frame[..NET_HDR_LEN + len];
            buffer[..NET_HDR_LEN].fill(0);
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
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
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
        let frame = &self.tx_frame[NET_HDR_LEN..len];
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
        VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_MAC | 1 << VIRTIO_NET_F_STATUS
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Served {
        match index {
            RX_QUEUE => self.receive(queue, mem),
            TX_QUEUE => self.transmit(queue, mem),
            _ => Served::default(),
        }
    }

    fn reset(&mut self) {
        self.rx_len = None;
    }
}

#[cfg(test)]
mod tests;
