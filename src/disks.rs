//! Opening the virtio-blk disks, before anything else is built, and naming
//! them as the guest will; `virtio_devices` attaches them (slots 0, 1, ...).

use kvm_ioctls::VmFd;
use rvmm_devices::virtio::block::{Block, BlockError};
use rvmm_devices::Bus;

use crate::config::DiskConfig;
use crate::memory::GuestMemoryMmap;
use crate::virtio_devices::{self, AttachError, AttachedDevice};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Open(#[from] BlockError),
    #[error(transparent)]
    Attach(#[from] AttachError),
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

/// Puts every opened disk on `mmio_bus`, in slots 0, 1, ...
pub fn attach_disks(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    mmio_bus: &mut Bus,
    blocks: Vec<Block>,
) -> Result<Vec<AttachedDevice>, DiskError> {
    blocks
        .into_iter()
        .enumerate()
        .map(|(index, block)| {
            let name = format!("disk {}", guest_name(index));
            Ok(virtio_devices::attach(
                vm,
                mem,
                mmio_bus,
                index,
                &name,
                Box::new(block),
            )?)
        })
        .collect()
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
}
