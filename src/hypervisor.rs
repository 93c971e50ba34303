//! Opening /dev/kvm, checking it offers what rvmm relies on, and creating a
//! VM and its in-kernel interrupt controllers and PIT.

use kvm_bindings::CpuId;
use kvm_bindings::{kvm_pit_config, KVM_API_VERSION, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::thread::JoinHandle;

use crate::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("/dev/kvm does not exist: enable virtualization and load the kvm module (modprobe kvm_intel or kvm_amd)")]
    Missing,
    #[error("no permission to open /dev/kvm: run as root or add your user to the kvm group")]
    NoPermission,
    #[error("cannot open /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    #[error("/dev/kvm speaks API version {0}, rvmm needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    #[error("/dev/kvm is not the KVM device (it does not answer KVM_GET_API_VERSION): it should be character device 10:232; recreate it or reload the kvm module")]
    NotKvm,
    #[error("this host's KVM lacks {0}, which rvmm needs; use a newer host kernel")]
    MissingCapability(&'static str),
    #[error("the thread listing KVM's CPUID entries panicked; this is a bug in rvmm")]
    CpuidThread,
    #[error("KVM could not {what}: {source}")]
    Setup {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

/// The capabilities rvmm uses, with the names KVM's documentation gives them.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "KVM_CAP_SET_IDENTITY_MAP_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Opens /dev/kvm and checks its API version and capabilities.
pub fn open_kvm() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => KvmError::Missing,
        libc::EACCES | libc::EPERM => KvmError::NoPermission,
        _ => KvmError::Open(e),
    })?;
    let version = kvm.get_api_version();
    if version < 0 {
        return Err(KvmError::NotKvm);
    }
    if version != KVM_API_VERSION as i32 {
        return Err(KvmError::ApiVersion(version));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCapability(name));
        }
    }
    Ok(kvm)
}

/// The CPUID entries KVM supports, being listed on a thread of its own.
///
/// Why: KVM runs CPUID for every leaf to list them, 0.5-0.6 ms on the PVM
/// hosts (each CPUID traps to the host's hypervisor), while creating the
/// VM, its memory slot and interrupt controllers takes the VMM thread
/// about as long; on a second CPU the two overlap. The thread has ended
/// before any guest instruction runs.
pub struct SupportedCpuid(Result<JoinHandle<Result<CpuId, kvm_ioctls::Error>>, CpuId>);

impl SupportedCpuid {
    /// Starts listing them (or lists them now if no thread can start).
    pub fn ask(kvm: &Kvm) -> Result<SupportedCpuid, KvmError> {
        let list = |kvm: &Kvm| kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES);
        // SAFETY: `kvm` owns this descriptor, open for the whole call.
        let copy = unsafe { BorrowedFd::borrow_raw(kvm.as_raw_fd()) }.try_clone_to_owned();
        let spawned = copy.and_then(|fd| {
            // SAFETY: `fd` is a fresh duplicate of /dev/kvm's descriptor that
            // the new Kvm alone owns and closes.
            let kvm = unsafe { Kvm::from_raw_fd(fd.into_raw_fd()) };
            std::thread::Builder::new()
                .name("rvmm-cpuid".into())
                .spawn(move || list(&kvm))
        });
        match spawned {
            Ok(thread) => Ok(SupportedCpuid(Ok(thread))),
            Err(_) => Ok(SupportedCpuid(Err(
                list(kvm).map_err(setup("list the supported CPUID entries"))?
            ))),
        }
    }

    /// The entries, once listed.
    pub fn wait(self) -> Result<CpuId, KvmError> {
        match self.0 {
            Ok(thread) => thread
                .join()
                .map_err(|_| KvmError::CpuidThread)?
                .map_err(setup("list the supported CPUID entries")),
            Err(listed) => Ok(listed),
        }
    }
}

/// Creates the VM, with no memory and no interrupt controllers yet: guest
/// memory goes in first (see [`create_interrupt_controllers`]).
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, KvmError> {
    let vm = kvm.create_vm().map_err(setup("create a VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(setup("set the TSS address"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
        .map_err(setup("set the identity map address"))?;
    Ok(vm)
}

/// Creates the in-kernel IOAPIC/PIC and PIT, after guest memory is
/// registered and before any vCPU (which needs the irqchip).
///
/// Why after the memory: once a VM has its irqchip, installing its first
/// memory slot waits for a grace period in KVM, 5-6 ms on the PVM hosts
/// (Linux 6.18), against 0.3 ms for the whole of VM creation in this order
/// (measured with a small C program: VM, slot, irqchip, PIT against VM,
/// irqchip, PIT, slot). Firecracker, which registers memory last, pays it
/// on every start and restore.
pub fn create_interrupt_controllers(vm: &VmFd) -> Result<(), KvmError> {
    vm.create_irq_chip()
        .map_err(setup("create the interrupt controller"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(setup("create the PIT"))?;
    Ok(())
}

fn setup(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Setup { what, source }
}
