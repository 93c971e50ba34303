//! The virtio-mmio transport (virtio 1.x, "version 2" register layout): the
//! registers a guest driver uses to discover a device, negotiate features,
//! place its queues and notify them. Kept apart from the devices it carries.
//!
//! Queue notifications arrive as eventfds (the VMM registers an ioeventfd at
//! QueueNotify; a notify write that reaches the bus signals the same eventfd),
//! and the device's work runs where those are handled: the VMM's event loop,
//! not the vCPU thread. The guest reaches the registers through an
//! [`MmioWindow`], which answers the interrupt registers without waiting
//! for the transport while its device is at work.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{GuestMemoryMmap, VirtioDevice};
use crate::bus::{lock, BusDevice};

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5256_4d4d; // "RVMM"

/// A queue as a snapshot keeps it (virtio-queue's `QueueState`, which
/// has no serde).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

/// The transport's registers and queues, for a snapshot.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TransportState {
    pub device_type: u32,
    pub status: u32,
    pub driver_features: u64,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub queue_select: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub queue_misconfigured: Vec<bool>,
    pub queues: Vec<QueueSnapshot>,
}

/// One virtio device behind its MMIO registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    /// Per queue: the driver wrote a size or address the queue cannot take.
    queue_misconfigured: Vec<bool>,
    queue_evts: Vec<EventFd>,
    irq: EventFd,
    /// Shared with the [`MmioWindow`], which serves its two registers.
    interrupt_status: Arc<AtomicU32>,
    status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    config_generation: u32,
    /// The guest reset the device; the device forgets its state on the
    /// thread that serves the queues, on its next turn.
    device_reset_pending: bool,
}

impl MmioTransport {
    /// Wraps `device`; `irq` is signalled to interrupt the guest.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        irq: EventFd,
    ) -> std::io::Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect::<Vec<_>>();
        let queue_evts = queues
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            device,
            mem,
            queue_misconfigured: vec![false; queues.len()],
            queues,
            queue_evts,
            irq,
            interrupt_status: Arc::new(AtomicU32::new(0)),
            status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            config_generation: 0,
            device_reset_pending: false,
        })
    }

    /// The transport's state, for a snapshot.
    pub fn state(&self) -> TransportState {
        TransportState {
            device_type: self.device.device_type(),
            status: self.status,
            driver_features: self.driver_features,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
            queue_misconfigured: self.queue_misconfigured.clone(),
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let s = q.state();
                    QueueSnapshot {
                        max_size: s.max_size,
                        next_avail: s.next_avail,
                        next_used: s.next_used,
                        event_idx_enabled: s.event_idx_enabled,
                        size: s.size,
                        ready: s.ready,
                        desc_table: s.desc_table,
                        avail_ring: s.avail_ring,
                        used_ring: s.used_ring,
                    }
                })
                .collect(),
        }
    }

    /// Takes the state a snapshot saved, which must be one this device can
    /// be in: its type, its queues and their limits, features it offers.
    /// The driver is told of its features again, and every ready queue is
    /// served once: a notification the snapshot caught unread is not lost.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), String> {
        if state.device_type != self.device.device_type() {
            return Err(format!(
                "a virtio device of type {} where this VM has type {}",
                state.device_type,
                self.device.device_type()
            ));
        }
        if state.queues.len() != self.queues.len()
            || state.queue_misconfigured.len() != self.queues.len()
        {
            return Err("a virtio device with another number of queues".into());
        }
        if state.driver_features & !self.offered_features() != 0 {
            return Err("a virtio driver with features this device does not offer".into());
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (saved, current) in state.queues.iter().zip(&self.queues) {
            if saved.max_size != current.max_size() {
                return Err("a virtio queue of another size limit".into());
            }
            let queue = Queue::try_from(virtio_queue::QueueState {
                max_size: saved.max_size,
                next_avail: saved.next_avail,
                next_used: saved.next_used,
                event_idx_enabled: saved.event_idx_enabled,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            })
            .map_err(|e| format!("a virtio queue that cannot be: {e}"))?;
            queues.push(queue);
        }
        self.queues = queues;
        self.status = state.status;
        self.driver_features = state.driver_features;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.queue_select = state.queue_select;
        self.config_generation = state.config_generation;
        self.interrupt_status
            .store(state.interrupt_status, Ordering::SeqCst);
        self.queue_misconfigured = state.queue_misconfigured.clone();
        if self.is_activated() {
            self.device.activate(self.driver_features);
            for (queue, evt) in self.queues.iter().zip(&self.queue_evts) {
                if queue.ready() {
                    let _ = evt.write(1);
                }
            }
        }
        Ok(())
    }

    /// The eventfd that signals a notification of queue `index`.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// What the transport offers: the device's features and EVENT_IDX.
    fn offered_features(&self) -> u64 {
        self.device.features() | super::VIRTIO_RING_F_EVENT_IDX
    }

    /// Whether the driver has finished setting the device up.
    pub fn is_activated(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
            && self.status & (VIRTIO_CONFIG_S_FAILED | VIRTIO_CONFIG_S_NEEDS_RESET) == 0
    }

    /// Serves queue `index` after a notification. Requests that arrive before
    /// the driver is ready, or on a queue it set up wrongly, are not touched.
    /// Returns true when requests are left for another round (the caller
    /// re-arms the queue's notification).
    pub fn process_queue(&mut self, index: usize) -> bool {
        if std::mem::take(&mut self.device_reset_pending) {
            self.device.reset();
        }
        if !self.is_activated() {
            log::debug!("virtio: notification before the driver is ready; ignored");
            return false;
        }
        match self.queues.get(index) {
            Some(queue) if queue.ready() => {}
            _ => return false,
        }
        // The device may use any ready queue, not only the one notified.
        let misconfigured =
            self.queues.iter().enumerate().find(|(i, q)| {
                q.ready() && (self.queue_misconfigured[*i] || !q.is_valid(&self.mem))
            });
        if let Some((bad, _)) = misconfigured {
            log::debug!(
                "virtio: queue {bad} is misconfigured by the guest; the device needs a reset"
            );
            self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
            self.signal(VIRTIO_MMIO_INT_CONFIG);
            return false;
        }
        let served = self
            .device
            .process_queues(index, &mut self.queues, &self.mem);
        if served.notify_guest {
            self.signal(VIRTIO_MMIO_INT_VRING);
        }
        served.more_pending
    }

    fn signal(&self, why: u32) {
        self.interrupt_status.fetch_or(why, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            log::error!("virtio: cannot interrupt the guest: {e}");
        }
    }

    fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_misconfigured.fill(false);
        for evt in &self.queue_evts {
            let _ = evt.read();
        }
        self.interrupt_status.store(0, Ordering::SeqCst);
        self.status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        // The device forgets its driver's state where its queues are served
        // (it may hold host resources, such as vsock's connections): that
        // thread is woken for it.
        self.device_reset_pending = true;
        if let Some(evt) = self.queue_evts.first() {
            let _ = evt.write(1);
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may only change while the driver sets the device up.
    fn queue_setup_allowed(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0
            && self.status & VIRTIO_CONFIG_S_DRIVER_OK == 0
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in order; anything else is ignored.
        let adds = value & !self.status;
        if value & self.status != self.status {
            log::debug!(
                "virtio: driver cleared status bits ({:#x} -> {value:#x}); ignored",
                self.status
            );
            return;
        }
        if adds & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.offered_features();
            if self.driver_features & !offered != 0
                || self.driver_features & super::VIRTIO_F_VERSION_1 == 0
            {
                // Leaving FEATURES_OK clear tells the driver we refused.
                log::debug!(
                    "virtio: driver asked for unsupported features {:#x}",
                    self.driver_features
                );
                self.status = value & !VIRTIO_CONFIG_S_FEATURES_OK;
                return;
            }
        }
        if adds & VIRTIO_CONFIG_S_DRIVER_OK != 0 && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            log::debug!("virtio: DRIVER_OK without FEATURES_OK; ignored");
            return;
        }
        self.status = value;
        if adds & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            let event_idx = self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
            for q in &mut self.queues {
                q.set_event_idx(event_idx);
            }
            self.device.activate(self.driver_features);
        }
    }

    fn read_register(&self, offset: u32) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        let setup = self.queue_setup_allowed();
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                let features_phase = self.status & VIRTIO_CONFIG_S_DRIVER != 0
                    && self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0;
                match (features_phase, self.driver_features_select) {
                    (true, 0) => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    (true, 1) => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    _ => log::debug!("virtio-mmio: driver features written out of order; ignored"),
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NUM if setup => {
                self.configure_queue(|q| q.try_set_size(u16::try_from(value).unwrap_or(0)))
            }
            VIRTIO_MMIO_QUEUE_READY if setup => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH if setup => {
                let addr = merge(
                    self.selected_queue_field(|q| q.desc_table()),
                    offset,
                    VIRTIO_MMIO_QUEUE_DESC_LOW,
                    value,
                );
                self.configure_queue(|q| q.try_set_desc_table_address(addr))
            }
            VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH if setup => {
                let addr = merge(
                    self.selected_queue_field(|q| q.avail_ring()),
                    offset,
                    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                    value,
                );
                self.configure_queue(|q| q.try_set_avail_ring_address(addr))
            }
            VIRTIO_MMIO_QUEUE_USED_LOW | VIRTIO_MMIO_QUEUE_USED_HIGH if setup => {
                let addr = merge(
                    self.selected_queue_field(|q| q.used_ring()),
                    offset,
                    VIRTIO_MMIO_QUEUE_USED_LOW,
                    value,
                );
                self.configure_queue(|q| q.try_set_used_ring_address(addr))
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => match self.queue_evts.get(value as usize) {
                // Normally caught by the ioeventfd; this is the fallback path.
                Some(evt) => {
                    let _ = evt.write(1);
                }
                None => {
                    log::debug!("virtio-mmio: notification for queue {value} that does not exist")
                }
            },
            VIRTIO_MMIO_INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            }
            VIRTIO_MMIO_STATUS => self.set_status(value),
            _ => log::debug!("virtio-mmio: ignored write of {value:#x} to register {offset:#x}"),
        }
    }

    fn selected_queue_field(&self, field: impl Fn(&Queue) -> u64) -> u64 {
        self.queues.get(self.queue_select as usize).map_or(0, field)
    }

    /// Applies a setting to the selected queue; one the queue refuses (a
    /// size that is not a power of two, a misaligned ring) marks it unusable
    /// until the device is reset.
    fn configure_queue(&mut self, set: impl FnOnce(&mut Queue) -> Result<(), virtio_queue::Error>) {
        let index = self.queue_select as usize;
        if let Some(q) = self.queues.get_mut(index) {
            if let Err(e) = set(q) {
                log::debug!("virtio-mmio: queue {index} setting refused: {e}");
                self.queue_misconfigured[index] = true;
            }
        }
    }
}

/// Replaces the low or high half of a 64-bit queue address.
fn merge(current: u64, offset: u32, low_register: u32, value: u32) -> GuestAddress {
    let value = u64::from(value);
    GuestAddress(if offset == low_register {
        (current & !0xffff_ffff) | value
    } else {
        (current & 0xffff_ffff) | (value << 32)
    })
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&self.read_register(offset as u32).to_le_bytes());
        } else {
            log::debug!(
                "virtio-mmio: {}-byte register read at {offset:#x}; registers are 32-bit",
                data.len()
            );
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device
                .write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            self.config_generation = self.config_generation.wrapping_add(1);
        } else if let (Ok(bytes), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_register(offset as u32, u32::from_le_bytes(bytes));
        } else {
            log::debug!(
                "virtio-mmio: {}-byte register write at {offset:#x} ignored",
                data.len()
            );
        }
    }
}

/// What the guest sees of one transport on the MMIO bus. The transport is
/// locked while its device serves a queue (a disk read, a flush), and a
/// driver reads InterruptStatus and writes InterruptAck after each request:
/// those two go to the shared status word at once, so a vCPU does not wait
/// out the device's I/O to take its interrupt. Every other register is the
/// transport's.
pub struct MmioWindow {
    transport: Arc<Mutex<MmioTransport>>,
    interrupt_status: Arc<AtomicU32>,
}

impl MmioWindow {
    pub fn new(transport: Arc<Mutex<MmioTransport>>) -> Self {
        let interrupt_status = lock(&transport).interrupt_status.clone();
        Self {
            transport,
            interrupt_status,
        }
    }
}

impl BusDevice for MmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == u64::from(VIRTIO_MMIO_INTERRUPT_STATUS) && data.len() == 4 {
            let status = self.interrupt_status.load(Ordering::SeqCst);
            data.copy_from_slice(&status.to_le_bytes());
        } else {
            lock(&self.transport).read(offset, data);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset == u64::from(VIRTIO_MMIO_INTERRUPT_ACK) => {
                let ack = u32::from_le_bytes(bytes);
                self.interrupt_status.fetch_and(!ack, Ordering::SeqCst);
            }
            _ => lock(&self.transport).write(offset, data),
        }
    }
}

/// Driver status values, in the order a driver sets them.
pub const STATUS_ACKNOWLEDGE: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
pub const STATUS_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
pub const STATUS_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
pub const STATUS_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
pub const STATUS_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    struct Idle;

    impl VirtioDevice for Idle {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8]
        }
        fn features(&self) -> u64 {
            super::super::VIRTIO_F_VERSION_1
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn process_queue(
            &mut self,
            _index: usize,
            _queue: &mut Queue,
            _mem: &GuestMemoryMmap,
        ) -> super::super::Served {
            super::super::Served::default()
        }
    }

    #[test]
    fn the_window_takes_interrupts_while_the_device_is_busy() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let transport = MmioTransport::new(Box::new(Idle), mem, irq).unwrap();
        transport.signal(VIRTIO_MMIO_INT_VRING);
        let transport = Arc::new(Mutex::new(transport));
        let mut window = MmioWindow::new(transport.clone());
        // The event loop holds the transport, as while a disk request runs.
        let busy = lock(&transport);
        let (done, took) = mpsc::channel();
        std::thread::spawn(move || {
            let mut pending = [0u8; 4];
            window.read(u64::from(VIRTIO_MMIO_INTERRUPT_STATUS), &mut pending);
            window.write(u64::from(VIRTIO_MMIO_INTERRUPT_ACK), &pending);
            let mut after_ack = [0u8; 4];
            window.read(u64::from(VIRTIO_MMIO_INTERRUPT_STATUS), &mut after_ack);
            let _ = done.send((u32::from_le_bytes(pending), u32::from_le_bytes(after_ack)));
        });
        let seen = took.recv_timeout(Duration::from_secs(5));
        drop(busy);
        assert_eq!(
            seen,
            Ok((VIRTIO_MMIO_INT_VRING, 0)),
            "the interrupt registers must not wait for the transport"
        );
        let mut magic = [0u8; 4];
        MmioWindow::new(transport).read(0, &mut magic);
        assert_eq!(
            u32::from_le_bytes(magic),
            MAGIC,
            "other registers are the transport's"
        );
    }
}
