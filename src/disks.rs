//! Attaching virtio-blk disks: each behind its own virtio-mmio window and
//! interrupt in the 32-bit MMIO hole, announced to Linux on its command line,
//! notified through ioeventfds and served on the VMM's event loop.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, VmFd};
use rvmm_devices::virtio::block::{Block, BlockError};
use rvmm_devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE};
use rvmm_devices::{Bus, BusError};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::config::DiskConfig;
use crate::memory::GuestMemoryMmap;
use rvmm_devices::boot_timer::{BOOT_TIMER_ADDRESS, BOOT_TIMER_LEN};

/// The first 4 KiB of the hole is the boot timer's; disks follow.
pub const VIRTIO_MMIO_START: u64 = BOOT_TIMER_ADDRESS + BOOT_TIMER_LEN;
/// Disks take IRQs 5 to 23 (COM1 has 4; the IOAPIC has 24 pins).
pub const FIRST_IRQ: u32 = 5;
pub const MAX_DISKS: usize = 19;
/// Offset of QueueNotify in a virtio-mmio window.
const QUEUE_NOTIFY: u64 = 0x50;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Open(#[from] BlockError),
    #[error("could not set up disk {index}: {what}: {source}")]
    Setup {
        index: usize,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("could not set up disk {index}: KVM could not {what}: {source}")]
    Kvm {
        index: usize,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
}

/// The guest's name for disk `index`: vda, vdb, ..., vdz, vdaa, ...
pub fn guest_name(index: usize) -> String {
    let mut name = String::new();
    let mut n = index;
    loop {
        name.insert(0, (b'a' + (n % 26) as u8) as char);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("vd{name}")
}

/// Where disk `index` lives: its MMIO window base and IRQ.
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

/// An attached disk, and what the event loop needs to serve it.
pub struct AttachedDisk {
    pub transport: Arc<Mutex<MmioTransport>>,
    queue_evts: Vec<EventFd>,
}

/// Opens (and locks) every disk, before anything else is built, so a disk
/// that cannot be used stops rvmm before any work.
pub fn open_disks(disks: &[DiskConfig]) -> Result<Vec<Block>, DiskError> {
    disks
        .iter()
        .enumerate()
        .map(|(index, disk)| {
            let id = disk
                .id
                .clone()
                .unwrap_or_else(|| format!("rvmm-{}", guest_name(index)));
            let block = Block::open(&disk.path, disk.read_only, &id)?;
            log::info!(
                "disk {}: {} ({} sectors{})",
                guest_name(index),
                disk.path.display(),
                block.sectors(),
                if disk.read_only { ", read-only" } else { "" }
            );
            Ok(block)
        })
        .collect()
}

/// Puts every opened disk on `mmio_bus` and wires its notifications and
/// interrupt through KVM.
pub fn attach_disks(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    blocks: Vec<Block>,
) -> Result<Vec<AttachedDisk>, DiskError> {
    let mut attached = Vec::with_capacity(blocks.len());
    for (index, block) in blocks.into_iter().enumerate() {
        let setup = |what| {
            move |source| DiskError::Setup {
                index,
                what,
                source,
            }
        };
        let kvm = |what| {
            move |source| DiskError::Kvm {
                index,
                what,
                source,
            }
        };
        let (base, irq) = placement(index);
        let irq_evt =
            EventFd::new(libc::EFD_NONBLOCK).map_err(setup("create its interrupt eventfd"))?;
        vm.register_irqfd(&irq_evt, irq)
            .map_err(kvm("route its interrupt"))?;
        let transport = MmioTransport::new(Box::new(block), mem.clone(), irq_evt)
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
        mmio_bus.insert(transport.clone(), base, MMIO_WINDOW_SIZE)?;
        attached.push(AttachedDisk {
            transport,
            queue_evts,
        });
    }
    Ok(attached)
}

impl MutEventSubscriber for AttachedDisk {
    fn init(&mut self, ops: &mut EventOps) {
        for (queue, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, queue as u32, EventSet::IN)) {
                log::error!("cannot watch disk queue notifications: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let queue = events.data() as usize;
        if let Some(evt) = self.queue_evts.get(queue) {
            debug_assert_eq!(evt.as_raw_fd(), events.fd());
            let _ = evt.read();
            let more = crate::sync::lock(&self.transport).process_queue(queue);
            if more {
                // Out of budget with requests waiting: come back after the
                // other events (a stop signal among them) have had their turn.
                let _ = evt.write(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_names_follow_linux() {
        assert_eq!(guest_name(0), "vda");
        assert_eq!(guest_name(1), "vdb");
        assert_eq!(guest_name(25), "vdz");
        assert_eq!(guest_name(26), "vdaa");
    }

    #[test]
    fn each_disk_has_its_own_window_and_irq() {
        assert_eq!(cmdline_arg(0), "virtio_mmio.device=4K@0xd0001000:5");
        assert_eq!(cmdline_arg(1), "virtio_mmio.device=4K@0xd0002000:6");
        let (last_base, last_irq) = placement(MAX_DISKS - 1);
        assert_eq!(last_irq, 23);
        assert!(
            last_base + MMIO_WINDOW_SIZE <= 0xfec0_0000,
            "disks must stay below the IOAPIC"
        );
    }
}
