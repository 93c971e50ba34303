//! Snapshots, in Firecracker's layout: a state file (versioned and
//! checksummed, `format`) with every vCPU's state, the VM's (interrupt
//! controllers, PIT, clock, `kvm`) and every device's, and a memory file
//! holding guest RAM, which a restore maps privately (copy-on-write: pages
//! are read as the guest touches them, and many VMs can share one file).
//!
//! A snapshot is taken of a paused VM; one from another rvmm version, on
//! another CPU model, or whose disks changed size or went away, refuses to
//! load with one line that says which.

pub mod format;
pub mod kvm;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rvmm_devices::i8042::{I8042State, I8042};
use rvmm_devices::serial::{SerialConsole, SerialConsoleState};
use rvmm_devices::virtio::mmio::{MmioTransport, TransportState};
use serde::{Deserialize, Serialize};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemoryMmap;
use crate::vcpu::Pause;
pub use kvm::{VcpuState, VmKvmState};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} {source}")]
    Format {
        path: PathBuf,
        source: format::FormatError,
    },
    #[error("snapshot {path} is corrupt: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("snapshot {path} was taken by rvmm {theirs}; this is rvmm {ours}: restore it with the rvmm that took it")]
    Version {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("snapshot {path} was taken on a {theirs} CPU; this host's is a {ours}: restore it on a host of the same CPU model")]
    CpuModel {
        path: PathBuf,
        theirs: String,
        ours: String,
    },
    #[error("snapshot {path}: its disk {disk} {why}; restore it with the disks it was taken with")]
    Disk {
        path: PathBuf,
        disk: PathBuf,
        why: String,
    },
    #[error("snapshot {path} describes a VM rvmm cannot build: {why}")]
    Impossible { path: PathBuf, why: String },
    #[error("memory file {path}: {why}")]
    Memory { path: PathBuf, why: String },
    #[error("cannot write the snapshot: {0}")]
    Write(std::io::Error),
}

/// The host CPU, as a snapshot must be restored on the same.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CpuModel {
    pub vendor: String,
    /// CPUID leaf 1's EAX: family, model, stepping.
    pub signature: u32,
}

impl CpuModel {
    pub fn host() -> CpuModel {
        let leaf0 = std::arch::x86_64::__cpuid(0);
        let vendor: Vec<u8> = [leaf0.ebx, leaf0.edx, leaf0.ecx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        CpuModel {
            vendor: String::from_utf8_lossy(&vendor).into_owned(),
            signature: std::arch::x86_64::__cpuid(1).eax,
        }
    }
}

impl std::fmt::Display for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (signature {:#x})", self.vendor, self.signature)
    }
}

/// One disk: where it is, and its transport's state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskState {
    pub path: PathBuf,
    pub read_only: bool,
    pub id: Option<String>,
    pub size: u64,
    pub transport: TransportState,
}

/// Everything a snapshot's state file holds.
#[derive(Serialize, Deserialize)]
pub struct SnapshotState {
    pub rvmm_version: String,
    pub cpu_model: CpuModel,
    pub mem_mib: u64,
    pub cpus: u8,
    pub cmdline: String,
    pub vm: VmKvmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialConsoleState,
    pub i8042: I8042State,
    pub disks: Vec<DiskState>,
}

/// Writes the state file.
pub fn write_state(state: &SnapshotState, file: &mut File) -> Result<(), SnapshotError> {
    let body = serde_json::to_vec(state).map_err(|e| SnapshotError::Write(e.into()))?;
    file.set_len(0).map_err(SnapshotError::Write)?;
    file.write_all(&format::encode(&body))
        .and_then(|()| file.sync_all())
        .map_err(SnapshotError::Write)
}

/// Parses the contents of a state file (`path` names it in messages).
pub fn parse_state(bytes: &[u8], path: &std::path::Path) -> Result<SnapshotState, SnapshotError> {
    let body = format::decode(bytes).map_err(|source| SnapshotError::Format {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_slice(body).map_err(|e| SnapshotError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a state file and checks that this rvmm, on this host, with these
/// disks, can restore it.
pub fn read_state(path: &std::path::Path) -> Result<SnapshotState, SnapshotError> {
    let path_buf = path.to_path_buf();
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Read {
        path: path_buf.clone(),
        source,
    })?;
    let state = parse_state(&bytes, path)?;
    let ours = env!("CARGO_PKG_VERSION");
    if state.rvmm_version != ours {
        return Err(SnapshotError::Version {
            path: path_buf,
            theirs: state.rvmm_version,
            ours: ours.into(),
        });
    }
    let host = CpuModel::host();
    if state.cpu_model != host {
        return Err(SnapshotError::CpuModel {
            path: path_buf,
            theirs: state.cpu_model.to_string(),
            ours: host.to_string(),
        });
    }
    let impossible = |why: String| SnapshotError::Impossible {
        path: path_buf.clone(),
        why,
    };
    if state.vcpus.len() != usize::from(state.cpus) || state.cpus == 0 {
        return Err(impossible(format!(
            "{} vCPU states for {} vCPUs",
            state.vcpus.len(),
            state.cpus
        )));
    }
    crate::memory::checked_mem_bytes(state.mem_mib, crate::memory::host_phys_bits())
        .map_err(|e| impossible(e.to_string()))?;
    for disk in &state.disks {
        let why = match std::fs::metadata(&disk.path) {
            Err(e) => Some(format!("cannot be opened ({e})")),
            Ok(meta) if meta.len() != disk.size => Some(format!(
                "is {} bytes, not the {} it was",
                meta.len(),
                disk.size
            )),
            Ok(_) => None,
        };
        if let Some(why) = why {
            return Err(SnapshotError::Disk {
                path: path_buf,
                disk: disk.path.clone(),
                why,
            });
        }
    }
    Ok(state)
}

/// Writes guest RAM to `file`, region after region; pages of zeros are
/// left as holes, so the file takes the room of what the guest used.
pub fn write_memory(mem: &GuestMemoryMmap, file: &File) -> Result<(), SnapshotError> {
    const PAGE: usize = 4096;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(0)
        .and_then(|()| file.set_len(total))
        .map_err(SnapshotError::Write)?;
    let mut offset = 0u64;
    let mut page = [0u8; PAGE];
    for region in mem.iter() {
        let len = region.len() as usize;
        for at in (0..len).step_by(PAGE) {
            let n = PAGE.min(len - at);
            // SAFETY: `at + n` lies inside this live mapping of guest RAM; the
            // paused guest does not write it meanwhile (a guest that did could
            // only make its own snapshot inconsistent).
            let source = unsafe { std::slice::from_raw_parts(region.as_ptr().add(at), n) };
            page[..n].copy_from_slice(source);
            if page[..n].iter().any(|&b| b != 0) {
                file.write_all_at(&page[..n], offset + at as u64)
                    .map_err(SnapshotError::Write)?;
            }
        }
        offset += len as u64;
    }
    file.sync_all().map_err(SnapshotError::Write)
}

/// How long a snapshot waits for every vCPU to give its state.
const CAPTURE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One disk as the running VM has it.
pub struct DiskSource {
    pub config: crate::config::DiskConfig,
    pub size: u64,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// What a running VM's event loop needs to take a snapshot of it.
pub struct Source {
    /// A second handle on the VM, for its interrupt controllers and clock.
    pub vm: kvm_ioctls::VmFd,
    pub memory: GuestMemoryMmap,
    pub serial: Arc<Mutex<SerialConsole>>,
    pub disks: Vec<DiskSource>,
    pub msr_indices: Vec<u32>,
    pub mem_mib: u64,
    pub cpus: u8,
    pub cmdline: String,
    /// What this VM has that rvmm cannot snapshot yet.
    pub unsupported: Option<&'static str>,
}

impl Source {
    /// The paused VM's state: vCPUs (each read on its own thread), the VM's
    /// interrupt controllers, PIT and clock, every device.
    pub fn capture(&self, pause: &Pause, i8042: &Mutex<I8042>) -> Result<SnapshotState, String> {
        if let Some(what) = self.unsupported {
            return Err(format!("rvmm cannot snapshot a VM with {what} yet"));
        }
        let vcpus = pause.capture_vcpus(
            usize::from(self.cpus),
            self.msr_indices.clone(),
            CAPTURE_LIMIT,
        )?;
        Ok(SnapshotState {
            rvmm_version: env!("CARGO_PKG_VERSION").into(),
            cpu_model: CpuModel::host(),
            mem_mib: self.mem_mib,
            cpus: self.cpus,
            cmdline: self.cmdline.clone(),
            vm: kvm::capture_vm(&self.vm)?,
            vcpus,
            serial: crate::sync::lock(&self.serial).state(),
            i8042: crate::sync::lock(i8042).state(),
            disks: self
                .disks
                .iter()
                .map(|d| DiskState {
                    path: d.config.path.clone(),
                    read_only: d.config.read_only,
                    id: d.config.id.clone(),
                    size: d.size,
                    transport: crate::sync::lock(&d.transport).state(),
                })
                .collect(),
        })
    }
}

/// A snapshot to restore instead of booting: its state and memory file,
/// and whether the VM is to run at once or wait paused.
pub struct Restore {
    pub state: Box<SnapshotState>,
    pub memory: File,
    pub resume: bool,
}

/// Puts the saved transports back into the disks, which were opened from
/// the saved paths in the same order.
pub fn restore_disks(
    transports: &[Arc<Mutex<MmioTransport>>],
    disks: &[DiskState],
) -> Result<(), String> {
    if transports.len() != disks.len() {
        return Err(format!(
            "{} disks where the snapshot has {}",
            transports.len(),
            disks.len()
        ));
    }
    for (index, (transport, disk)) in transports.iter().zip(disks).enumerate() {
        crate::sync::lock(transport)
            .restore(&disk.transport)
            .map_err(|e| format!("disk {}: {e}", crate::disks::guest_name(index)))?;
    }
    Ok(())
}

/// A second handle on `vm`, for the event loop to read it with.
pub fn second_handle(
    kvm_handle: &kvm_ioctls::Kvm,
    vm: &kvm_ioctls::VmFd,
) -> Result<kvm_ioctls::VmFd, String> {
    use std::os::fd::AsRawFd;
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor for the VM; nothing
    // else owns it.
    let fd = unsafe { libc::fcntl(vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "cannot keep a handle on the VM: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a VM descriptor of `kvm_handle`'s, owned from here on.
    unsafe { kvm_handle.create_vmfd_from_rawfd(fd) }
        .map_err(|e| format!("cannot keep a handle on the VM: {e}"))
}
