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
    #[error("{path} is not a usable ELF kernel: {defect}")]
    BadElf { path: PathBuf, defect: KernelDefect },
    #[error("{path} is not a usable bzImage: {defect}")]
    BadBzImage { path: PathBuf, defect: KernelDefect },
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
    #[error("could not read initrd {path} into guest memory: {source}")]
    InitrdRead {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line: {0}")]
    Cmdline(#[from] cmdline::CmdlineError),
    #[error("could not write the kernel command line into guest memory: {0}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("could not write boot information into guest memory: {0}")]
    WriteBootInfo(#[source] linux_loader::configurator::Error),
}

/// What is wrong with a kernel image that looked like one.
#[derive(Debug, thiserror::Error)]
pub enum KernelDefect {
    #[error("a segment lies outside guest memory (raise --mem) or the file is truncated")]
    SegmentOutsideMemory,
    #[error(
        "the file is truncated ({len} bytes, its header says {promised}); copy or rebuild it again"
    )]
    Truncated { len: u64, promised: u64 },
    #[error("no setup header")]
    NoSetupHeader,
    #[error("boot protocol {major}.{minor} without a 64-bit entry point (rvmm needs 2.12+ with XLF_KERNEL_64)")]
    No64BitEntry { major: u16, minor: u16 },
    #[error("its header says it takes no command line (cmdline_size 0): the file is corrupt")]
    NoCmdline,
    #[error(transparent)]
    Loader(#[from] linux_loader::loader::Error),
}
