//! The built VM: KVM's VM object and the guest memory registered with it,
//! owned together. KVM holds the memory's host addresses in its memory
//! slots, so the mapping must outlive the VM file descriptor; fields drop in
//! the order they are declared, so `fd` closes before `memory` is unmapped,
//! by construction rather than by the order of locals in a function.

use kvm_ioctls::{Kvm, VmFd};

use crate::host_memory::{self, GuestRam, HostMemoryError};
use crate::hypervisor::{self, KvmError};
use crate::memory::{self, GuestMemoryMmap, MemoryError};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    HostMemory(#[from] HostMemoryError),
}

pub struct Vm {
    /// Declared first: dropped (closed) before `memory`.
    fd: VmFd,
    ram: GuestRam,
}

impl Vm {
    /// Creates the VM and `mem_bytes` of guest memory, registered with it:
    /// fresh, or a snapshot's `memory_file` mapped privately. `on_created`
    /// runs between the two (to time the phases).
    pub fn create(
        kvm: &Kvm,
        mem_bytes: u64,
        hugepages: bool,
        memory_file: Option<&std::fs::File>,
        on_created: impl FnOnce(),
    ) -> Result<Vm, VmError> {
        let fd = hypervisor::create_vm(kvm)?;
        on_created();
        let ranges = memory::ram_ranges(mem_bytes);
        let ram = match memory_file {
            Some(file) => host_memory::map_guest_file(&ranges, file)?,
            None => host_memory::map_guest_ram(&ranges)?,
        };
        if hugepages {
            host_memory::advise_huge_pages(ram.memory());
        }
        memory::register_guest_memory(&fd, ram.memory())?;
        hypervisor::create_interrupt_controllers(&fd)?;
        Ok(Vm { fd, ram })
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }
}
