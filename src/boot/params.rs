//! The boot information handed to the kernel: the Linux zero page for 64-bit
//! entry, or `hvm_start_info` for PVH, plus the command line.

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::GuestAddress;

use super::{BootError, InitrdPlacement, KernelImage};
use crate::layout::{ACPI_RSDP_START, CMDLINE_START, PVH_INFO_START, ZERO_PAGE_START};
use crate::memory::{e820_map, GuestMemoryMmap};
use crate::x86::regs::EntryMode;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// The zero page for a kernel entered through the 64-bit boot protocol.
pub fn zero_page(
    kernel: &KernelImage,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    mem_bytes: u64,
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if kernel.setup_header.is_none() {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = e820_map(mem_bytes);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = map.len() as u8;
    params.acpi_rsdp_addr = ACPI_RSDP_START;
    params
}

/// The PVH start info, its module list (the initrd) and memory map, each at
/// the address it will be written to.
pub struct PvhInfo {
    pub start_info: hvm_start_info,
    pub modules: Vec<hvm_modlist_entry>,
    pub modules_addr: u64,
    pub memmap: Vec<hvm_memmap_table_entry>,
    pub memmap_addr: u64,
}

pub fn pvh_info(initrd: Option<InitrdPlacement>, mem_bytes: u64) -> PvhInfo {
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem_bytes)
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let modules_addr = PVH_INFO_START + std::mem::size_of::<hvm_start_info>() as u64;
    let memmap_addr =
        modules_addr + (modules.len() * std::mem::size_of::<hvm_modlist_entry>()) as u64;
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { modules_addr },
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: memmap_addr,
        memmap_entries: memmap.len() as u32,
        rsdp_paddr: ACPI_RSDP_START,
        ..Default::default()
    };
    PvhInfo {
        start_info,
        modules,
        modules_addr,
        memmap,
        memmap_addr,
    }
}

/// Writes the command line and the boot information for `kernel.entry`.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &KernelImage,
    cmdline: &Cmdline,
    initrd: Option<InitrdPlacement>,
    mem_bytes: u64,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(BootError::WriteCmdline)?;
    let cmdline_len = super::cmdline::to_string(cmdline).len();
    match kernel.entry {
        EntryMode::LongMode { .. } => {
            let params = zero_page(kernel, cmdline_len, initrd, mem_bytes);
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
                &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
                mem,
            )
            .map_err(BootError::WriteBootInfo)
        }
        EntryMode::Pvh { .. } => {
            let info = pvh_info(initrd, mem_bytes);
            let mut params = BootParams::new(&info.start_info, GuestAddress(PVH_INFO_START));
            params.set_sections(&info.memmap, GuestAddress(info.memmap_addr));
            if !info.modules.is_empty() {
                params.set_modules(&info.modules, GuestAddress(info.modules_addr));
            }
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
                .map_err(BootError::WriteBootInfo)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::ZERO_PAGE_START;

    const MIB: u64 = 1 << 20;

    fn elf_kernel() -> KernelImage {
        KernelImage {
            entry: EntryMode::LongMode { entry: 0x100_0000 },
            end: 0x200_0000,
            cmdline_max: 2047,
            initrd_addr_max: 0x37ff_ffff,
            setup_header: None,
        }
    }

    #[test]
    fn zero_page_describes_cmdline_initrd_and_memory() {
        let initrd = InitrdPlacement {
            addr: 0x7f0_0000,
            size: 12345,
        };
        let p = zero_page(&elf_kernel(), 42, Some(initrd), 128 * MIB);
        let hdr = p.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!(
            ({ hdr.cmd_line_ptr }, { hdr.cmdline_size }),
            (CMDLINE_START as u32, 42)
        );
        assert_eq!(
            ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
            (0x7f0_0000, 12345)
        );
        let n = p.e820_entries as usize;
        let total: u64 = p.e820_table[..n].iter().map(|e| e.size).sum();
        assert_eq!(total, 128 * MIB);
        // The zero page itself sits in usable RAM below the EBDA.
        let first = p.e820_table[0];
        assert!(first.r#type == 1 && ZERO_PAGE_START + 4096 <= first.addr + first.size);
    }

    #[test]
    fn pvh_info_lists_the_initrd_and_the_memory_map() {
        let initrd = InitrdPlacement {
            addr: 0x3000_0000,
            size: 4096,
        };
        let info = pvh_info(Some(initrd), 5 << 30);
        assert_eq!(info.start_info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.start_info.nr_modules, 1);
        assert_eq!(info.modules[0].paddr, 0x3000_0000);
        assert_eq!(info.start_info.memmap_entries as usize, info.memmap.len());
        assert_eq!(info.memmap.iter().map(|e| e.size).sum::<u64>(), 5 << 30);
        let end = info.memmap_addr + (info.memmap.len() * 24) as u64;
        assert!(
            end <= ZERO_PAGE_START,
            "PVH structures must stay below the zero page"
        );
        let none = pvh_info(None, 64 * MIB);
        assert_eq!(
            (none.start_info.nr_modules, none.start_info.modlist_paddr),
            (0, 0)
        );
    }
}
