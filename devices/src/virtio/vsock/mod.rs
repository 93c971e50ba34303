//! virtio-vsock: stream sockets between the guest (AF_VSOCK) and host
//! programs on Unix sockets, in Firecracker's hybrid form (see [`muxer`]),
//! so that agents written for Firecracker work unchanged.
//!
//! The guest's transmit queue carries its packets (header, then payload);
//! the receive queue takes the host's. Each transmitted chain is walked and
//! bounded before it is read, payloads are at most 64 KiB, and every round
//! of work is bounded, as for the other devices. The event queue is never
//! used (it tells of a transport reset after a snapshot).

mod connection;
pub mod muxer;
pub mod packet;

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestAddress;

use super::{
    check_chain, pop_or_rearm, read_config_bytes, GuestMemoryMmap, Served, VirtioDevice,
    REQUESTS_PER_NOTIFICATION, VIRTIO_F_VERSION_1,
};
pub use connection::CONN_BUF_SIZE;
use muxer::Muxer;
use packet::{Header, HEADER_LEN};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
pub const QUEUE_SIZE: u16 = 256;
/// Largest payload either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// `VIRTIO_ID_VSOCK`.
pub const DEVICE_ID: u32 = 19;
/// Context IDs 0 to 2 are the hypervisor's and the host's; the all-ones one
/// means "any".
pub const MIN_GUEST_CID: u32 = 3;

/// One vsock device.
pub struct Vsock {
    guest_cid: u64,
    host: Muxer,
    /// A payload on its way through, either way.
    buffer: Vec<u8>,
}

impl Vsock {
    /// The device for guest `guest_cid`; `listener` (non-blocking) is the
    /// socket at `uds_path` where host programs connect.
    pub fn new(
        guest_cid: u32,
        listener: UnixListener,
        uds_path: PathBuf,
    ) -> std::io::Result<Vsock> {
        let guest_cid = u64::from(guest_cid);
        Ok(Vsock {
            guest_cid,
            host: Muxer::new(guest_cid, listener, uds_path)?,
            buffer: vec![0; MAX_PAYLOAD],
        })
    }

    /// Readable when the host side has work: the VMM serves the receive
    /// queue then.
    pub fn host_events_fd(&self) -> RawFd {
        self.host.events_fd()
    }

    /// Takes the guest's packets to the host side.
    fn transmit(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Served {
        let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
        let mut packets = 0;
        while packets < REQUESTS_PER_NOTIFICATION {
            let Some(chain) = pop_or_rearm(queue, mem) else {
                return served(packets, queue, mem, false);
            };
            let head = chain.head_index();
            let limit = (HEADER_LEN + MAX_PAYLOAD) as u64;
            let packet = check_chain(mem, table, size, head, u32::from(QUEUE_SIZE), u32::MAX)
                .filter(|&total| total <= limit)
                .and_then(|_| Reader::new(mem, chain).ok())
                .and_then(|mut reader| {
                    let mut bytes = [0u8; HEADER_LEN];
                    reader.read_exact(&mut bytes).ok()?;
                    let header = Header::parse(&bytes);
                    let len = header.len as usize;
                    if len > reader.available_bytes() || len > MAX_PAYLOAD {
                        return None;
                    }
                    reader.read_exact(&mut self.buffer[..len]).ok()?;
                    Some((header, len))
                });
            match packet {
                Some((header, len)) => self.host.guest_packet(&header, &self.buffer[..len]),
                None => log::debug!("virtio-vsock: transmitted packet {head} refused"),
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                log::debug!("virtio-vsock: cannot return packet {head}: {e}");
                return served(packets, queue, mem, false);
            }
            packets += 1;
        }
        served(packets, queue, mem, true)
    }

    /// Puts the host side's packets in the guest's receive buffers.
    fn receive(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> Served {
        let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
        let mut packets = 0;
        while packets < REQUESTS_PER_NOTIFICATION {
            if !self.host.has_packets() {
                return served(packets, queue, mem, false);
            }
            let Some(chain) = pop_or_rearm(queue, mem) else {
                return served(packets, queue, mem, false);
            };
            let head = chain.head_index();
            let writer = check_chain(mem, table, size, head, u32::from(QUEUE_SIZE), u32::MAX)
                .and_then(|_| Writer::new(mem, chain).ok())
                .filter(|w| w.available_bytes() >= HEADER_LEN);
            let written = match writer {
                Some(mut writer) => {
                    let room = (writer.available_bytes() - HEADER_LEN).min(MAX_PAYLOAD);
                    let Some((header, len)) = self.host.next_packet(&mut self.buffer[..room])
                    else {
                        // Nothing after all (a stream with no data): the
                        // buffer stays the guest's.
                        queue.go_to_previous_position();
                        return served(packets, queue, mem, false);
                    };
                    let ok = writer.write_all(&header.to_bytes()).is_ok()
                        && writer.write_all(&self.buffer[..len]).is_ok();
                    if ok {
                        (HEADER_LEN + len) as u32
                    } else {
                        log::debug!("virtio-vsock: cannot fill receive buffer {head}");
                        0
                    }
                }
                None => {
                    log::debug!("virtio-vsock: receive buffer {head} is not a usable buffer");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, written) {
                log::debug!("virtio-vsock: cannot return receive buffer {head}: {e}");
                return served(packets, queue, mem, false);
            }
            packets += 1;
        }
        served(packets, queue, mem, true)
    }
}

fn served(packets: usize, queue: &mut Queue, mem: &GuestMemoryMmap, more_pending: bool) -> Served {
    Served {
        notify_guest: packets > 0 && queue.needs_notification(mem).unwrap_or(true),
        more_pending,
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    /// Serves one queue alone: the guest's packets, or the host's.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Served {
        match index {
            TX_QUEUE => self.transmit(queue, mem),
            RX_QUEUE => self.receive(queue, mem),
            _ => Served::default(),
        }
    }

    /// A notification of the transmit queue, or host work (served as the
    /// receive queue's): the guest's packets go to the host side, the host
    /// side's events are taken, and what they produced (answers, data)
    /// goes into the receive queue.
    fn process_queues(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Served {
        if index == EVENT_QUEUE {
            return Served::default();
        }
        let mut served = Served::default();
        if index == TX_QUEUE {
            if let Some(tx) = queues.get_mut(TX_QUEUE).filter(|q| q.ready()) {
                served = self.transmit(tx, mem);
            }
        }
        let host_more = self.host.poll_host();
        if let Some(rx) = queues.get_mut(RX_QUEUE).filter(|q| q.ready()) {
            let received = self.receive(rx, mem);
            served.notify_guest |= received.notify_guest;
            served.more_pending |= received.more_pending;
        }
        served.more_pending |= host_more;
        served
    }

    fn reset(&mut self) {
        self.host.reset();
    }
}

#[cfg(test)]
mod tests;
