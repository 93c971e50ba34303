//! Registers, FPU, MSRs and local APIC of a vCPU at boot, for each entry mode.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::gdt;
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use crate::memory::GuestMemoryMmap;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("could not write the boot GDT into guest memory: {0}")]
    WriteGdt(GuestMemoryError),
    #[error("KVM could not {what} of vCPU {cpu}: {source}")]
    Kvm {
        what: &'static str,
        cpu: u8,
        source: kvm_ioctls::Error,
    },
}

/// How the boot CPU enters the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    LongMode { entry: u64 },
    /// PVH: 32-bit protected mode, paging off, EBX = hvm_start_info.
    Pvh { entry: u64 },
}

/// General-purpose registers at entry.
pub fn boot_regs(mode: EntryMode) -> kvm_regs {
    match mode {
        EntryMode::LongMode { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
        EntryMode::Pvh { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
    }
}

/// The boot GDT each mode uses.
pub fn boot_gdt(mode: EntryMode) -> [u64; 4] {
    match mode {
        EntryMode::LongMode { .. } => gdt::long_mode_gdt(),
        EntryMode::Pvh { .. } => gdt::protected_mode_gdt(),
    }
}

/// Special registers at entry, starting from what KVM reports for a fresh vCPU.
pub fn boot_sregs(mode: EntryMode, mut sregs: kvm_sregs) -> kvm_sregs {
    let table = boot_gdt(mode);
    let code = gdt::segment(table[1], gdt::CODE_SELECTOR);
    let data = gdt::segment(table[2], gdt::DATA_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(table[3], gdt::TSS_SELECTOR);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    match mode {
        EntryMode::LongMode { .. } => {
            sregs.cr0 |= CR0_PE | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// Writes the boot GDT and an empty IDT into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap, mode: EntryMode) -> Result<(), RegsError> {
    for (i, entry) in boot_gdt(mode).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::WriteGdt)
}

/// MSRs set at boot: syscall and sysenter state cleared, TSC at zero, fast strings on.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    use x86::msr::{
        IA32_CSTAR, IA32_FMASK, IA32_KERNEL_GSBASE, IA32_LSTAR, IA32_MISC_ENABLE, IA32_STAR,
        IA32_SYSENTER_CS, IA32_SYSENTER_EIP, IA32_SYSENTER_ESP, IA32_TIME_STAMP_COUNTER,
    };
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(IA32_SYSENTER_CS, 0),
        msr(IA32_SYSENTER_ESP, 0),
        msr(IA32_SYSENTER_EIP, 0),
        msr(IA32_STAR, 0),
        msr(IA32_CSTAR, 0),
        msr(IA32_KERNEL_GSBASE, 0),
        msr(IA32_FMASK, 0),
        msr(IA32_LSTAR, 0),
        msr(IA32_TIME_STAMP_COUNTER, 0),
        msr(IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
}

/// Local APIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const DELIVERY_EXTINT: u32 = 0x7;
const DELIVERY_NMI: u32 = 0x4;

fn set_delivery_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
        *b = *r as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (r, b) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = b as std::os::raw::c_char;
    }
}

/// Puts a vCPU into its boot state. Only the boot CPU (`cpu == 0`) gets entry
/// registers; the others wait for the guest to start them.
pub fn configure_vcpu(vcpu: &VcpuFd, cpu: u8, mode: EntryMode) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, cpu, source };

    let msrs = boot_msrs();
    let wanted = msrs.len();
    let msrs = Msrs::from_entries(&msrs).expect("boot MSR list fits a KVM msrs array");
    let set = vcpu.set_msrs(&msrs).map_err(kvm("set the MSRs"))?;
    if set != wanted {
        log::warn!("vCPU {cpu}: KVM accepted only {set} of {wanted} boot MSRs");
    }

    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("set the FPU state"))?;

    let mut lapic = vcpu.get_lapic().map_err(kvm("read the local APIC"))?;
    set_delivery_mode(&mut lapic.regs, APIC_LVT0, DELIVERY_EXTINT);
    set_delivery_mode(&mut lapic.regs, APIC_LVT1, DELIVERY_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(kvm("set up the local APIC"))?;

    if cpu == 0 {
        let sregs = vcpu
            .get_sregs()
            .map_err(kvm("read the special registers"))?;
        vcpu.set_sregs(&boot_sregs(mode, sregs))
            .map_err(kvm("set the special registers"))?;
        vcpu.set_regs(&boot_regs(mode))
            .map_err(kvm("set the registers"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_entry_state() {
        let mode = EntryMode::LongMode { entry: 0x100_0200 };
        let regs = boot_regs(mode);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp, regs.rflags),
            (0x100_0200, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
        let sregs = boot_sregs(mode, kvm_sregs::default());
        assert_eq!(sregs.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr4 & CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            (sregs.cs.l, sregs.cs.selector, sregs.ss.selector),
            (1, 8, 0x10)
        );
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_START, 31));
    }

    #[test]
    fn pvh_entry_state() {
        let mode = EntryMode::Pvh { entry: 0x100_0000 };
        let regs = boot_regs(mode);
        assert_eq!((regs.rip, regs.rbx), (0x100_0000, PVH_INFO_START));
        let sregs = boot_sregs(
            mode,
            kvm_sregs {
                cr4: CR4_PAE,
                efer: EFER_LME,
                ..Default::default()
            },
        );
        assert_eq!(sregs.cr0, CR0_PE | CR0_ET, "protected mode without paging");
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!(
            (sregs.cs.l, sregs.cs.db, sregs.cs.limit),
            (0, 1, 0xffff_ffff)
        );
    }

    #[test]
    fn lint_delivery_modes() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0 + 1] = 0x07; // some other mode set before
        regs[APIC_LVT0] = 0x55;
        set_delivery_mode(&mut regs, APIC_LVT0, DELIVERY_EXTINT);
        set_delivery_mode(&mut regs, APIC_LVT1, DELIVERY_NMI);
        assert_eq!(regs[APIC_LVT0] as u8, 0x55, "vector bits are kept");
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(regs[APIC_LVT1 + 1] as u8, 0x04);
    }
}
