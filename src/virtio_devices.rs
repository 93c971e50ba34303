//! Where virtio-mmio devices (disks first, then network cards) live and how
//! they are wired: each has its own 4 KiB window and interrupt in the 32-bit
//! MMIO hole, is announced to Linux on its command line (and in the DSDT),
//! notified through ioeventfds, and served on the VMM's event loop.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, VmFd};
use rvmm_devices::boot_timer::{BOOT_TIMER_ADDRESS, BOOT_TIMER_LEN};
use rvmm_devices::virtio::mmio::{MmioTransport, MmioWindow, MMIO_WINDOW_SIZE};
use rvmm_devices::virtio::VirtioDevice;
use rvmm_devices::{Bus, BusError};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemoryMmap;

/// The first 4 KiB of the hole is the boot timer's; virtio devices follow.
pub const VIRTIO_MMIO_START: u64 = BOOT_TIMER_ADDRESS + BOOT_TIMER_LEN;
/// Devices take IRQs 5 to 23 (COM1 has 4; the IOAPIC has 24 pins).
pub const FIRST_IRQ: u32 = 5;
pub const MAX_DEVICES: usize = 19;
/// Offset of QueueNotify in a virtio-mmio window.
const QUEUE_NOTIFY: u64 = 0x50;

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("could not set up {device}: {what}: {source}")]
    Setup {
        device: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("could not set up {device}: KVM could not {what}: {source}")]
    Kvm {
        device: String,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
}

/// Where device `index` lives: its MMIO window base and IRQ.
pub fn placement(index: usize) -> (u64, u32) {
    (
        VIRTIO_MMIO_START + index as u64 * MMIO_WINDOW_SIZE,
        FIRST_IRQ + index as u32,
    )
}

/// The kernel argument that tells Linux about a virtio-mmio device.
pub fn cmdline_arg(index: usize) -> String {
    let (base, irq) = placement(index);
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// An attached device, and what the event loop needs to serve it.
pub struct AttachedDevice {
    transport: Arc<Mutex<MmioTransport>>,
    queue_evts: Vec<EventFd>,
    /// A host descriptor whose readiness means "serve this queue" (a tap
    /// with frames for the receive queue), watched edge-triggered.
    host_input: Option<(RawFd, usize)>,
}

/// Puts `device` at slot `index` on `mmio_bus` and wires its notifications
/// and interrupt through KVM. `name` is for messages ("disk vda").
pub fn attach(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    index: usize,
    name: &str,
    device: Box<dyn VirtioDevice>,
) -> Result<AttachedDevice, AttachError> {
    let setup = |what| {
        move |source| AttachError::Setup {
            device: name.to_string(),
            what,
            source,
        }
    };
    let kvm = |what| {
        move |source| AttachError::Kvm {
            device: name.to_string(),
            what,
            source,
        }
    };
    let (base, irq) = placement(index);
    let irq_evt =
        EventFd::new(libc::EFD_NONBLOCK).map_err(setup("create its interrupt eventfd"))?;
    vm.register_irqfd(&irq_evt, irq)
        .map_err(kvm("route its interrupt"))?;
    let transport = MmioTransport::new(device, mem.clone(), irq_evt)
        .map_err(setup("create its queue eventfds"))?;
    let mut queue_evts = Vec::new();
    for (queue, evt) in transport.queue_evts().iter().enumerate() {
        vm.register_ioevent(
            evt,
            &IoEventAddress::Mmio(base + QUEUE_NOTIFY),
            queue as u32,
        )
        .map_err(kvm("register its queue notification"))?;
        queue_evts.push(evt.try_clone().map_err(setup("clone an eventfd"))?);
    }
    let transport = Arc::new(Mutex::new(transport));
    // The guest's side: the event loop locks only the transport to serve
    // a queue, and the vCPUs take their interrupts without waiting for it.
    let window = MmioWindow::new(transport.clone());
    mmio_bus.insert(Arc::new(Mutex::new(window)), base, MMIO_WINDOW_SIZE)?;
    Ok(AttachedDevice {
        transport,
        queue_evts,
        host_input: None,
    })
}

impl AttachedDevice {
    /// The device's transport, for a snapshot to read or restore.
    pub fn transport(&self) -> Arc<Mutex<MmioTransport>> {
        self.transport.clone()
    }

    /// Serves `queue` whenever `fd` (which the device owns) becomes readable.
    pub fn serve_on_input(mut self, fd: RawFd, queue: usize) -> Self {
        self.host_input = Some((fd, queue));
        self
    }

    fn serve(&mut self, queue: usize) {
        let more = crate::sync::lock(&self.transport).process_queue(queue);
        if more {
            // Out of budget with work waiting: come back after the other
            // events (a stop signal among them) have had their turn.
            if let Some(evt) = self.queue_evts.get(queue) {
                let _ = evt.write(1);
            }
        }
    }
}

impl MutEventSubscriber for AttachedDevice {
    fn init(&mut self, ops: &mut EventOps) {
        for (queue, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, queue as u32, EventSet::IN)) {
                log::error!("cannot watch virtio queue notifications: {e:?}");
            }
        }
        if let Some((fd, queue)) = self.host_input {
            let events =
                Events::with_data_raw(fd, queue as u32, EventSet::IN | EventSet::EDGE_TRIGGERED);
            if let Err(e) = ops.add(events) {
                log::error!("cannot watch a device's host input: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let queue = events.data() as usize;
        match self.queue_evts.get(queue) {
            Some(evt) if evt.as_raw_fd() == events.fd() => {
                let _ = evt.read();
            }
            _ => {}
        }
        self.serve(queue);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_has_its_own_window_and_irq() {
        assert_eq!(cmdline_arg(0), "virtio_mmio.device=4K@0xd0001000:5");
        assert_eq!(cmdline_arg(1), "virtio_mmio.device=4K@0xd0002000:6");
        let (last_base, last_irq) = placement(MAX_DEVICES - 1);
        assert_eq!(last_irq, 23);
        assert!(
            last_base + MMIO_WINDOW_SIZE <= 0xfec0_0000,
            "devices must stay below the IOAPIC"
        );
    }
}
