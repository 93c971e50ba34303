//! Loading the kernel (format told by content, never by name) and the initrd.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{BootError, KernelDefect};
use crate::layout::{CMDLINE_MAX_SIZE, HIMEM_START, MMIO_HOLE_START};
use crate::memory::{low_mem_end, GuestMemoryMmap};
use crate::x86::regs::EntryMode;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// Boot protocol facts from the bzImage setup header.
const HDRS_MAGIC_OFFSET: usize = 0x202;
const SETUP_SECTS_OFFSET: usize = 0x1f1;
const SYSSIZE_OFFSET: usize = 0x1f4;
const BOOT_PROTOCOL_64BIT_ENTRY: u16 = 0x020c;
const XLF_KERNEL_64: u16 = 1 << 0;
const ENTRY_64_OFFSET: u64 = 0x200;
/// Highest initrd address for kernels whose header does not say (boot.rst).
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// What the loaded kernel needs from the rest of the boot.
#[derive(Clone, Copy, Debug)]
pub struct KernelImage {
    pub entry: EntryMode,
    /// First byte past everything the kernel occupies, including the room a
    /// bzImage needs to decompress in place.
    pub end: u64,
    /// Longest command line the kernel accepts, without the NUL.
    pub cmdline_max: usize,
    /// Highest address any byte of the initrd may occupy.
    pub initrd_addr_max: u64,
    /// The bzImage's own setup header, to start the zero page from.
    pub setup_header: Option<setup_header>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

enum Format {
    Elf,
    /// With the file length its setup header promises.
    BzImage {
        promised_len: u64,
    },
}

/// Opens a kernel or initrd, which must be a regular file.
pub fn open_image(role: &'static str, path: &Path) -> Result<File, BootError> {
    let fail = |source| BootError::Open {
        role,
        path: path.into(),
        source,
    };
    let file = File::open(path).map_err(fail)?;
    if !file.metadata().map_err(fail)?.is_file() {
        return Err(fail(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    Ok(file)
}

fn detect_format(file: &mut File, path: &Path) -> Result<Format, BootError> {
    let mut head = [0u8; HDRS_MAGIC_OFFSET + 4];
    let mut len = 0;
    while len < head.len() {
        match file.read(&mut head[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(source) => {
                return Err(BootError::Open {
                    role: "kernel",
                    path: path.into(),
                    source,
                })
            }
        }
    }
    if len >= 4 && head[..4] == *b"\x7fELF" {
        Ok(Format::Elf)
    } else if len == head.len() && head[HDRS_MAGIC_OFFSET..] == *b"HdrS" {
        Ok(Format::BzImage {
            promised_len: bzimage_length(&head),
        })
    } else {
        Err(BootError::NotAKernel(path.into()))
    }
}

/// The end of the highest loadable ELF segment, so a kernel that needs more
/// memory than the guest has gets that message rather than a load error.
/// `None` when the headers cannot be read (the loader then says why).
fn elf_extent(file: &mut File) -> Option<u64> {
    use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
    use vm_memory::ByteValued;
    let mut ehdr = Elf64_Ehdr::default();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_exact(ehdr.as_mut_slice()).ok()?;
    file.seek(SeekFrom::Start(ehdr.e_phoff)).ok()?;
    let mut end = 0u64;
    for _ in 0..ehdr.e_phnum {
        let mut phdr = Elf64_Phdr::default();
        file.read_exact(phdr.as_mut_slice()).ok()?;
        if phdr.p_type == PT_LOAD {
            end = end.max(phdr.p_paddr.checked_add(phdr.p_memsz)?);
        }
    }
    Some(end)
}

/// The length a bzImage's setup header promises: boot sector and setup
/// sectors (0 means 4, boot.rst), then `syssize` 16-byte paragraphs. A file
/// shorter than that would load, and the guest would crash somewhere in the
/// missing part.
fn bzimage_length(head: &[u8; HDRS_MAGIC_OFFSET + 4]) -> u64 {
    let setup_sects = match head[SETUP_SECTS_OFFSET] {
        0 => 4,
        n => u64::from(n),
    };
    let syssize = u32::from_le_bytes(
        head[SYSSIZE_OFFSET..SYSSIZE_OFFSET + 4]
            .try_into()
            .unwrap_or_default(),
    );
    (setup_sects + 1) * 512 + u64::from(syssize) * 16
}

/// Loads the kernel at `path` into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<KernelImage, BootError> {
    let mut file = open_image("kernel", path)?;
    let format = detect_format(&mut file, path)?;
    let rewind = |file: &mut File| {
        file.seek(SeekFrom::Start(0))
            .map(drop)
            .map_err(|source| BootError::Open {
                role: "kernel",
                path: path.into(),
                source,
            })
    };
    rewind(&mut file)?;
    let mem_bytes: u64 = mem.iter().map(vm_memory::GuestMemoryRegion::len).sum();
    // No --mem helps a kernel that reaches past the start of the MMIO hole.
    let too_large = |needed: u64| {
        if needed > MMIO_HOLE_START {
            BootError::KernelOutOfReach {
                path: path.into(),
                end: needed,
                limit: MMIO_HOLE_START,
            }
        } else {
            BootError::KernelTooLarge {
                path: path.into(),
                needed_mib: needed.div_ceil(MIB),
                mem_mib: mem_bytes / MIB,
            }
        }
    };
    match format {
        Format::Elf => {
            if let Some(extent) = elf_extent(&mut file) {
                if extent > low_mem_end(mem_bytes) {
                    return Err(too_large(extent));
                }
            }
            rewind(&mut file)?;
            let loaded =
                Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
                    let defect = match e {
                        linux_loader::loader::Error::Elf(
                            linux_loader::loader::elf::Error::ReadKernelImage,
                        ) => KernelDefect::SegmentOutsideMemory,
                        other => KernelDefect::Loader(other),
                    };
                    BootError::BadElf {
                        path: path.into(),
                        defect,
                    }
                })?;
            if loaded.kernel_end > low_mem_end(mem_bytes) {
                return Err(too_large(loaded.kernel_end));
            }
            let entry = match loaded.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => EntryMode::Pvh { entry: addr.0 },
                _ => EntryMode::LongMode {
                    entry: loaded.kernel_load.0,
                },
            };
            Ok(KernelImage {
                entry,
                end: loaded.kernel_end,
                cmdline_max: CMDLINE_MAX_SIZE - 1,
                initrd_addr_max: DEFAULT_INITRD_ADDR_MAX,
                setup_header: None,
            })
        }
        Format::BzImage { promised_len } => {
            let bad = |defect: KernelDefect| BootError::BadBzImage {
                path: path.into(),
                defect,
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            if len < promised_len {
                return Err(bad(KernelDefect::Truncated {
                    len,
                    promised: promised_len,
                }));
            }
            let loaded = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
                .map_err(|e| bad(e.into()))?;
            let hdr = loaded
                .setup_header
                .ok_or_else(|| bad(KernelDefect::NoSetupHeader))?;
            if hdr.version < BOOT_PROTOCOL_64BIT_ENTRY || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(bad(KernelDefect::No64BitEntry {
                    major: hdr.version >> 8,
                    minor: hdr.version & 0xff,
                }));
            }
            if hdr.cmdline_size == 0 {
                return Err(bad(KernelDefect::NoCmdline));
            }
            // The kernel decompresses in place from where it runs: the load
            // address if it can relocate, else its preferred address.
            let runs_at = if hdr.relocatable_kernel != 0 {
                loaded.kernel_load.0
            } else {
                loaded.kernel_load.0.max(hdr.pref_address)
            };
            // A corrupt header can name an address near the top of the
            // 64-bit space: saturate, and the size check below refuses it.
            let end = loaded
                .kernel_end
                .max(runs_at.saturating_add(u64::from(hdr.init_size)));
            if end > low_mem_end(mem_bytes) {
                return Err(too_large(end));
            }
            Ok(KernelImage {
                entry: EntryMode::LongMode {
                    entry: loaded.kernel_load.0 + ENTRY_64_OFFSET,
                },
                end,
                cmdline_max: (hdr.cmdline_size as usize).min(CMDLINE_MAX_SIZE - 1),
                initrd_addr_max: u64::from(hdr.initrd_addr_max),
                setup_header: Some(hdr),
            })
        }
    }
}

/// Where an initrd of `size` bytes goes: as high as the kernel allows, below
/// the MMIO hole, page aligned, above the kernel.
pub fn initrd_placement(
    kernel: &KernelImage,
    mem_bytes: u64,
    size: u64,
) -> Option<InitrdPlacement> {
    let top = low_mem_end(mem_bytes).min(kernel.initrd_addr_max.saturating_add(1)) & !(PAGE - 1);
    let addr = top.checked_sub(size)? & !(PAGE - 1);
    let kernel_end = kernel.end.checked_next_multiple_of(PAGE)?;
    (addr >= kernel_end).then_some(InitrdPlacement { addr, size })
}

/// Loads the initrd at `path` above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &KernelImage,
) -> Result<InitrdPlacement, BootError> {
    let mut file = open_image("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            role: "initrd",
            path: path.into(),
            source,
        })?
        .len();
    let mem_bytes: u64 = mem.iter().map(vm_memory::GuestMemoryRegion::len).sum();
    let placement = initrd_placement(kernel, mem_bytes, size).ok_or(BootError::InitrdTooLarge {
        path: path.into(),
        size_mib: size.div_ceil(MIB),
        mem_mib: mem_bytes / MIB,
    })?;
    mem.read_exact_volatile_from(GuestAddress(placement.addr), &mut file, size as usize)
        .map_err(|e| BootError::InitrdRead {
            path: path.into(),
            source: e,
        })?;
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(end: u64, initrd_addr_max: u64) -> KernelImage {
        KernelImage {
            entry: EntryMode::LongMode { entry: HIMEM_START },
            end,
            cmdline_max: 2047,
            initrd_addr_max,
            setup_header: None,
        }
    }

    #[test]
    fn initrd_goes_to_the_top_of_low_memory() {
        let k = kernel(0x20_0000, DEFAULT_INITRD_ADDR_MAX);
        let p = initrd_placement(&k, 256 * MIB, 10_000).unwrap();
        assert_eq!(p.addr % PAGE, 0);
        assert!(p.addr + p.size <= 256 * MIB);
        assert!(256 * MIB - (p.addr + p.size) < PAGE);
    }

    #[test]
    fn initrd_respects_initrd_addr_max() {
        let k = kernel(0x20_0000, 0x37ff_ffff);
        let p = initrd_placement(&k, 2048 * MIB, 5 * MIB).unwrap();
        assert!(p.addr + p.size <= 0x3800_0000);
    }

    #[test]
    fn initrd_never_overlaps_the_kernel() {
        let k = kernel(30 * MIB + 1, DEFAULT_INITRD_ADDR_MAX);
        assert_eq!(initrd_placement(&k, 32 * MIB, 2 * MIB), None);
        assert!(initrd_placement(&k, 32 * MIB, MIB).is_some());
        assert_eq!(initrd_placement(&k, 32 * MIB, u64::MAX), None);
    }

    #[test]
    fn a_bzimage_header_near_the_top_of_memory_is_refused() {
        // Found by fuzzing: pref_address + init_size overflowed.
        let mut image = vec![0u8; 0x1000];
        image[0x1f1] = 1; // setup_sects
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020f_u16.to_le_bytes());
        image[0x211] = 1; // LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&0x10_0000_u32.to_le_bytes());
        image[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        image[0x238..0x23c].copy_from_slice(&2048_u32.to_le_bytes()); // cmdline_size
        image[0x258..0x260].copy_from_slice(&(u64::MAX - 0x10).to_le_bytes()); // pref_address
        image[0x260..0x264].copy_from_slice(&0x10_0000_u32.to_le_bytes()); // init_size
        let path = std::env::temp_dir().join(format!("rvmm-bz-top-{}", std::process::id()));
        std::fs::write(&path, &image).unwrap();
        let ram = crate::host_memory::map_guest_ram(&crate::memory::ram_ranges(32 * MIB)).unwrap();
        let mem = ram.memory();
        let result = load_kernel(mem, &path);
        std::fs::remove_file(&path).unwrap();
        assert!(
            matches!(result, Err(BootError::KernelOutOfReach { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_bzimage_promises_its_setup_and_syssize() {
        let mut head = [0u8; HDRS_MAGIC_OFFSET + 4];
        head[SYSSIZE_OFFSET..SYSSIZE_OFFSET + 4].copy_from_slice(&0x100_u32.to_le_bytes());
        // setup_sects 0 means 4: boot sector + 4 sectors + 0x100 paragraphs.
        assert_eq!(bzimage_length(&head), 5 * 512 + 0x1000);
        head[SETUP_SECTS_OFFSET] = 30;
        assert_eq!(bzimage_length(&head), 31 * 512 + 0x1000);
        head[SYSSIZE_OFFSET..SYSSIZE_OFFSET + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(bzimage_length(&head), 31 * 512 + u64::from(u32::MAX) * 16);
    }

    #[test]
    fn content_decides_the_format() {
        let dir = std::env::temp_dir().join(format!("rvmm-fmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let elf_named_bz = dir.join("bzImage");
        std::fs::write(&elf_named_bz, b"\x7fELF\x02\x01\x01").unwrap();
        let mut f = File::open(&elf_named_bz).unwrap();
        assert!(matches!(
            detect_format(&mut f, &elf_named_bz),
            Ok(Format::Elf)
        ));

        let mut bz = vec![0u8; 0x300];
        bz[HDRS_MAGIC_OFFSET..HDRS_MAGIC_OFFSET + 4].copy_from_slice(b"HdrS");
        let bz_named_elf = dir.join("vmlinux.elf");
        std::fs::write(&bz_named_elf, &bz).unwrap();
        let mut f = File::open(&bz_named_elf).unwrap();
        assert!(matches!(
            detect_format(&mut f, &bz_named_elf),
            Ok(Format::BzImage { .. })
        ));

        let text = dir.join("notes.txt");
        std::fs::write(&text, b"hello").unwrap();
        let mut f = File::open(&text).unwrap();
        assert!(matches!(
            detect_format(&mut f, &text),
            Err(BootError::NotAKernel(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
