//! Virtio devices: the [`VirtioDevice`] trait a device model implements, and
//! the virtio-mmio transport ([`mmio::MmioTransport`]) that carries one.

pub mod block;
pub mod mmio;
pub mod net;
pub mod vsock;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

/// Guest memory as the devices see it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: a virtio 1.x (non-legacy) device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// `VIRTIO_RING_F_EVENT_IDX`: each side says when it next wants to be
/// notified, which spares most kicks and interrupts. The transport offers it
/// for every device; devices take chains through [`pop_or_rearm`].
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Most requests served for one queue notification before the event loop
/// gets its turn back; the rest are served on the next round.
pub const REQUESTS_PER_NOTIFICATION: usize = 64;
/// Most data moved for one notification: a round ends once a request takes
/// it past this (one request always goes through, however large).
pub const BYTES_PER_NOTIFICATION: u64 = 8 << 20;

/// What one round of serving a queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Served {
    /// Buffers went back to the guest and it asked to be interrupted.
    pub notify_guest: bool,
    /// The budget ran out with requests still waiting: serve again soon.
    pub more_pending: bool,
}

/// A device model carried by a virtio transport. The transport owns the
/// queues and the guest-facing registers; the device sees only requests.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2 for block).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space. Out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Takes a write to the configuration space (most devices ignore them).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Serves at most [`REQUESTS_PER_NOTIFICATION`] available requests, or
    /// about [`BYTES_PER_NOTIFICATION`] of data, on `queue`, so that a guest keeping its queue full cannot hold the event
    /// loop (which also handles stop signals) for ever.
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Served;
    /// Serves a notification of queue `index` with every queue at hand (the
    /// transport has checked that each ready one is set up right; one that
    /// is not ready must not be used). A device whose queues depend on each
    /// other (vsock answers transmitted packets on its receive queue)
    /// overrides it; the same budget holds.
    fn process_queues(
        &mut self,
        index: usize,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
    ) -> Served {
        match queues.get_mut(index) {
            Some(queue) if queue.ready() => self.process_queue(index, queue, mem),
            _ => Served::default(),
        }
    }
    /// The driver has set the device up (DRIVER_OK) with `features`. Called
    /// on a vCPU thread: a device records what it needs and acts on it when
    /// it next serves a queue.
    fn activate(&mut self, _features: u64) {}
    /// Forgets per-driver state: the guest reset the device. Called on the
    /// thread that serves the queues, so it may close host resources.
    fn reset(&mut self) {}
}

/// The next available chain of `queue`. When there is none, notifications
/// are re-armed first (with EVENT_IDX the guest is told to kick at the next
/// entry, as it otherwise never would again) and the queue looked at once
/// more, so that a chain made meanwhile is not left without a kick.
pub fn pop_or_rearm<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
) -> Option<DescriptorChain<&'a GuestMemoryMmap>> {
    if let Some(chain) = queue.pop_descriptor_chain(mem) {
        return Some(chain);
    }
    match queue.enable_notification(mem) {
        Ok(true) => queue.pop_descriptor_chain(mem),
        _ => None,
    }
}

/// Copies `data.len()` bytes of `config` at `offset`; zeros past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}

/// Walks the descriptor chain at `head` of the table at `table` (of `size`
/// entries) before anything reads it, and returns its total length, or None
/// when it must be refused: an indirect descriptor (no device here offers
/// them), a descriptor longer than `max_len`, a `next` outside the table,
/// more than `max_descriptors` descriptors (which also ends a loop).
pub fn check_chain(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    size: u16,
    head: u16,
    max_descriptors: u32,
    max_len: u32,
) -> Option<u64> {
    let mut index = head;
    let mut total = 0u64;
    for _ in 0..max_descriptors {
        let desc: Descriptor = mem
            .read_obj(table.checked_add(u64::from(index) * 16)?)
            .ok()?;
        if desc.refers_to_indirect_table() {
            log::debug!("virtio: indirect descriptor, but the feature was not offered");
            return None;
        }
        if desc.len() > max_len {
            log::debug!("virtio: descriptor longer than {max_len} bytes");
            return None;
        }
        total += u64::from(desc.len());
        if !desc.has_next() {
            return Some(total);
        }
        index = desc.next();
        if index >= size {
            return None;
        }
    }
    log::debug!("virtio: chain of more than {max_descriptors} descriptors");
    None
}

/// Writes descriptor `index` of the table at `table`, as a guest driver
/// would: for the device tests.
#[cfg(test)]
pub(crate) fn write_test_descriptor(
    mem: &GuestMemoryMmap,
    table: u64,
    index: u16,
    (addr, len, flags, next): (u64, u32, u16, u16),
) {
    let at = GuestAddress(table + 16 * u64::from(index));
    mem.write_obj(addr, at).unwrap();
    mem.write_obj(len, at.unchecked_add(8)).unwrap();
    mem.write_obj(flags, at.unchecked_add(12)).unwrap();
    mem.write_obj(next, at.unchecked_add(14)).unwrap();
}
