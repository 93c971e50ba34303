//! Where things live in guest-physical memory (x86_64). One place, so the
//! boot code, the e820 map and the device setup cannot disagree.

/// Boot GDT and (empty) IDT for the vCPU's first instructions.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;

/// PVH `hvm_start_info`, followed by its memory map and module list.
pub const PVH_INFO_START: u64 = 0x6000;
/// Linux "zero page" (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot CPU (grows down below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, one PDPT, and PDs for the first 4 GiB.
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Number of 1 GiB page directories, i.e. how much is identity mapped at entry.
pub const IDENTITY_MAPPED_GIB: u64 = 4;

/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The most the x86 kernel accepts when its header does not say (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Extended BIOS data area, where the MP table goes; everything from here up
/// to 1 MiB is reserved (EBDA, VGA, BIOS ROM).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables: the RSDP where a BIOS-booted kernel scans for it (the BIOS
/// area, 0xe0000-0xfffff), the other tables after it.
pub const ACPI_RSDP_START: u64 = 0xe_0000;

/// Where "high" memory and the kernel start.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit MMIO hole: guest RAM stops here and resumes at 4 GiB. Devices,
/// the IOAPIC and the LAPIC live in between.
pub const MMIO_HOLE_START: u64 = 0xd000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// Addresses KVM needs for its own use on Intel (must be inside the hole).
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
