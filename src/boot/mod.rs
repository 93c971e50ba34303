//! Putting a kernel, its initramfs and its command line into guest memory,
//! and describing them to the kernel in the format its entry point expects.

pub mod cmdline;
mod kernel;
mod params;

pub use kernel::{load_initrd, load_kernel, open_image, InitrdPlacement, KernelImage};
pub use params::write_boot_info;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot read {role} {path}: {source}")]
    Open {
        role: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a Linux kernel: neither an ELF file nor a bzImage (no 'HdrS' header)")]
    NotAKernel(PathBuf),
    #[error("{path} is not a usable ELF kernel: {reason}")]
    BadElf { path: PathBuf, reason: String },
    #[error("{path} is not a usable bzImage: {reason}")]
    BadBzImage { path: PathBuf, reason: String },
    #[error("kernel {path} needs {needed_mib} MiB of guest memory but --mem is {mem_mib} MiB; raise --mem")]
    KernelTooLarge {
        path: PathBuf,
        needed_mib: u64,
        mem_mib: u64,
    },
    #[error("kernel {path} says it ends at {end:#x}, but a kernel must fit below {limit:#x} (the 32-bit MMIO hole): the file is corrupt or not an x86-64 kernel")]
    KernelOutOfReach { path: PathBuf, end: u64, limit: u64 },
    #[error(
        "initrd {path} ({size_mib} MiB) does not fit in guest memory beside the kernel; raise --mem (now {mem_mib} MiB)"
    )]
    InitrdTooLarge {
        path: PathBuf,
        size_mib: u64,
        mem_mib: u64,
    },
    #[error("could not read initrd {path} into guest memory: {reason}")]
    InitrdRead { path: PathBuf, reason: String },
    #[error("kernel command line: {0}")]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error("could not write boot information into guest memory: {0}")]
    WriteBootInfo(String),
}
