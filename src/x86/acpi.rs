//! ACPI tables, built with the rust-vmm `acpi_tables` crate: how a kernel
//! with ACPI (a distribution kernel, say) finds its CPUs, interrupt
//! controllers and devices. Distribution kernels often cannot take
//! virtio-mmio devices from the command line (Debian's is built without
//! `VIRTIO_MMIO_CMDLINE_DEVICES`); they find them here, in the DSDT, as
//! Firecracker and Cloud Hypervisor describe them.
//!
//! The platform is "hardware-reduced" ACPI: no PM timer, no SCI, no legacy
//! fixed hardware; power-off and reset go through the FADT's sleep control
//! and reset registers (`rvmm_devices::acpi_power`). Kernels without ACPI
//! ignore all of this and read the MP table and the command line instead.

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{aml, Aml, AmlSink};
use rvmm_devices::acpi_power::{
    ACPI_POWER_PORT, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::layout::{ACPI_RSDP_START, HIMEM_START};
use crate::memory::GuestMemoryMmap;
use crate::x86::mptable::{IOAPIC_ADDRESS, LAPIC_ADDRESS};

const OEM_ID: [u8; 6] = *b"RVMM  ";
const OEM_TABLE_ID: [u8; 8] = *b"RVMMVM  ";
const OEM_REVISION: u32 = 1;
/// FADT IA-PC boot architecture flags: an 8042 is present (so Linux probes
/// it), there is no VGA and no CMOS RTC.
const BOOT_ARCH_8042: u16 = 1 << 1;
const BOOT_ARCH_NO_VGA: u16 = 1 << 2;
const BOOT_ARCH_NO_CMOS_RTC: u16 = 1 << 5;

/// A device the DSDT describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiDevice {
    /// A 16550 UART at an I/O port range, with an IRQ.
    Serial { port: u16, len: u8, irq: u32 },
    /// The i8042 keyboard controller (data and command ports, IRQ 1).
    I8042 { irq: u32 },
    /// A virtio-mmio transport: a 4 KiB window and an edge-triggered IRQ.
    VirtioMmio { base: u32, len: u32, irq: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables need {needed} bytes but only {room} fit below 1 MiB; use fewer vCPUs or devices")]
    TooLarge { needed: u64, room: u64 },
    #[error("could not write the ACPI tables into guest memory: {0}")]
    Write(GuestMemoryError),
}

/// The DSDT's AML: `\_S5_` (soft-off, the only sleep state offered), and one
/// device object per entry of `devices`, under `\_SB`.
fn dsdt_bytes(devices: &[AcpiDevice]) -> Vec<u8> {
    let mut s5 = Vec::new();
    aml::Name::new("_S5_".into(), &aml::Package::new(vec![&S5_SLEEP_TYPE])).to_aml_bytes(&mut s5);
    let mut body = Vec::new();
    let (mut uarts, mut virtio) = (0u8, 0u32);
    for device in devices {
        match *device {
            AcpiDevice::Serial { port, len, irq } => {
                let name = format!("COM{}", uarts + 1);
                let io = aml::IO::new(port, port, 1, len);
                let int = aml::Interrupt::new(true, true, false, false, irq);
                let crs = aml::ResourceTemplate::new(vec![&io, &int]);
                aml::Device::new(
                    name.as_str().into(),
                    vec![
                        &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
                        &aml::Name::new("_UID".into(), &uarts),
                        &aml::Name::new("_CRS".into(), &crs),
                    ],
                )
                .to_aml_bytes(&mut body);
                uarts += 1;
            }
            AcpiDevice::I8042 { irq } => {
                let data = aml::IO::new(0x60, 0x60, 1, 1);
                let command = aml::IO::new(0x64, 0x64, 1, 1);
                let int = aml::Interrupt::new(true, true, false, false, irq);
                let crs = aml::ResourceTemplate::new(vec![&data, &command, &int]);
                aml::Device::new(
                    "PS2_".into(),
                    vec![
                        &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
                        &aml::Name::new("_CRS".into(), &crs),
                    ],
                )
                .to_aml_bytes(&mut body);
            }
            AcpiDevice::VirtioMmio { base, len, irq } => {
                let name = format!("V{virtio:03X}");
                let window = aml::Memory32Fixed::new(true, base, len);
                let int = aml::Interrupt::new(true, true, false, false, irq);
                let crs = aml::ResourceTemplate::new(vec![&window, &int]);
                aml::Device::new(
                    name.as_str().into(),
                    vec![
                        &aml::Name::new("_HID".into(), &"LNRO0005"),
                        &aml::Name::new("_UID".into(), &virtio),
                        &aml::Name::new("_CRS".into(), &crs),
                    ],
                )
                .to_aml_bytes(&mut body);
                virtio += 1;
            }
        }
    }
    let mut scope = Vec::new();
    aml::Scope::new("\\_SB_".into(), vec![&RawAml(&body)]).to_aml_bytes(&mut scope);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&s5);
    dsdt.append_slice(&scope);
    dsdt.as_slice().to_vec()
}

/// Already-encoded AML, to put inside a scope.
struct RawAml<'a>(&'a [u8]);

impl Aml for RawAml<'_> {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.0);
    }
}

fn madt_bytes(cpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(LAPIC_ADDRESS),
    );
    for cpu in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    // The IOAPIC's ID follows the CPUs', as in the MP table.
    madt.add_structure(IoApic::new(cpus, IOAPIC_ADDRESS, 0));
    to_bytes(&madt)
}

fn fadt_bytes(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    let port = |offset: u64| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            ACPI_POWER_PORT + offset,
        )
    };
    fadt.sleep_control_reg = port(SLEEP_CONTROL_OFFSET);
    fadt.sleep_status_reg = port(SLEEP_STATUS_OFFSET);
    fadt.reset_reg = port(RESET_OFFSET);
    fadt.reset_value = RESET_VALUE;
    fadt.iapc_boot_arch = (BOOT_ARCH_8042 | BOOT_ARCH_NO_VGA | BOOT_ARCH_NO_CMOS_RTC).into();
    to_bytes(&fadt.finalize())
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

/// Every table, each with the guest address it goes to, RSDP first.
pub fn acpi_tables(cpus: u8, devices: &[AcpiDevice]) -> Vec<(u64, Vec<u8>)> {
    let align = |addr: u64| addr.next_multiple_of(16);
    // The RSDP first, then the XSDT, whose size is known (two entries).
    let xsdt_addr = align(ACPI_RSDP_START + Rsdp::len() as u64);
    let after_xsdt = align(xsdt_addr + 36 + 2 * 8);
    let dsdt = dsdt_bytes(devices);
    let dsdt_addr = after_xsdt;
    let fadt = fadt_bytes(dsdt_addr);
    let fadt_addr = align(dsdt_addr + dsdt.len() as u64);
    let madt = madt_bytes(cpus);
    let madt_addr = align(fadt_addr + fadt.len() as u64);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    vec![
        (ACPI_RSDP_START, to_bytes(&rsdp)),
        (xsdt_addr, to_bytes(&xsdt)),
        (dsdt_addr, dsdt),
        (fadt_addr, fadt),
        (madt_addr, madt),
    ]
}

/// Writes the tables into guest memory; returns the RSDP's address.
pub fn write_acpi_tables(
    mem: &GuestMemoryMmap,
    cpus: u8,
    devices: &[AcpiDevice],
) -> Result<u64, AcpiError> {
    let tables = acpi_tables(cpus, devices);
    let end = tables
        .iter()
        .map(|(addr, bytes)| addr + bytes.len() as u64)
        .max()
        .unwrap_or(ACPI_RSDP_START);
    if end > HIMEM_START {
        return Err(AcpiError::TooLarge {
            needed: end - ACPI_RSDP_START,
            room: HIMEM_START - ACPI_RSDP_START,
        });
    }
    for (addr, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(ACPI_RSDP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn devices() -> Vec<AcpiDevice> {
        vec![
            AcpiDevice::Serial {
                port: 0x3f8,
                len: 8,
                irq: 4,
            },
            AcpiDevice::I8042 { irq: 1 },
            AcpiDevice::VirtioMmio {
                base: 0xd000_1000,
                len: 0x1000,
                irq: 5,
            },
            AcpiDevice::VirtioMmio {
                base: 0xd000_2000,
                len: 0x1000,
                irq: 6,
            },
        ]
    }

    #[test]
    fn tables_chain_from_the_rsdp_and_their_checksums_hold() {
        let tables = acpi_tables(4, &devices());
        let at = |addr: u64| {
            &tables
                .iter()
                .find(|(a, _)| *a == addr)
                .unwrap_or_else(|| panic!("nothing at {addr:#x}"))
                .1
        };
        let rsdp = at(ACPI_RSDP_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        let xsdt = at(u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let signatures: Vec<&[u8]> = entries.iter().map(|&e| &at(e)[..4]).collect();
        assert_eq!(signatures, [b"FACP", b"APIC"]);
        let fadt = at(entries[0]);
        let dsdt = at(u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert_eq!(&dsdt[..4], b"DSDT");
        for (addr, table) in &tables[1..] {
            let len = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, table.len(), "length of the table at {addr:#x}");
            assert_eq!(sum(table), 0, "checksum of the table at {addr:#x}");
        }
        // The tables do not overlap and stay below 1 MiB.
        let mut spans: Vec<(u64, u64)> = tables
            .iter()
            .map(|(a, b)| (*a, a + b.len() as u64))
            .collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "{spans:x?}");
        assert!(spans.last().unwrap().1 <= HIMEM_START);
    }

    #[test]
    fn madt_lists_every_cpu_and_the_ioapic() {
        let madt = madt_bytes(3);
        let mut at = 44;
        let (mut apic_ids, mut ioapics) = (vec![], vec![]);
        while at < madt.len() {
            match madt[at] {
                0 => apic_ids.push(madt[at + 3]),
                1 => ioapics.push(u32::from_le_bytes(madt[at + 4..at + 8].try_into().unwrap())),
                other => panic!("unexpected MADT entry type {other}"),
            }
            at += madt[at + 1] as usize;
        }
        assert_eq!(apic_ids, [0, 1, 2]);
        assert_eq!(ioapics, [IOAPIC_ADDRESS]);
    }

    #[test]
    fn dsdt_names_each_virtio_device_with_its_window() {
        let dsdt = dsdt_bytes(&devices());
        let count = dsdt.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, 2);
        for base in [0xd000_1000u32, 0xd000_2000] {
            assert!(
                dsdt.windows(4).any(|w| w == base.to_le_bytes()),
                "no window at {base:#x}"
            );
        }
    }

    #[test]
    fn power_off_and_reset_go_to_rvmms_registers() {
        let fadt = fadt_bytes(0x1000);
        // FADT offsets (ACPI 6.5, table 5.9): RESET_REG at 116, RESET_VALUE
        // at 128, SLEEP_CONTROL_REG at 244, SLEEP_STATUS_REG at 256.
        let io_port = |at: usize| {
            assert_eq!(fadt[at], 1, "system I/O space at {at}");
            u64::from_le_bytes(fadt[at + 4..at + 12].try_into().unwrap())
        };
        assert_eq!(io_port(116), ACPI_POWER_PORT + RESET_OFFSET);
        assert_eq!(fadt[128], RESET_VALUE);
        assert_eq!(io_port(244), ACPI_POWER_PORT + SLEEP_CONTROL_OFFSET);
        assert_eq!(io_port(256), ACPI_POWER_PORT + SLEEP_STATUS_OFFSET);
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // \_S5_ is a package whose first element is S5_SLEEP_TYPE.
        let dsdt = dsdt_bytes(&devices());
        let at = dsdt.windows(4).position(|w| w == b"_S5_").expect("no _S5_");
        assert_eq!(dsdt[at + 4], 0x12, "package op");
        assert_eq!(dsdt[at + 7], 0x0a, "byte prefix");
        assert_eq!(dsdt[at + 8], S5_SLEEP_TYPE);
    }

    #[test]
    fn the_largest_machine_still_fits_below_1_mib() {
        let many: Vec<AcpiDevice> = (0..19)
            .map(|i| AcpiDevice::VirtioMmio {
                base: 0xd000_1000 + i * 0x1000,
                len: 0x1000,
                irq: 5 + i,
            })
            .collect();
        let tables = acpi_tables(crate::x86::mptable::MAX_CPUS, &many);
        let end = tables
            .iter()
            .map(|(a, b)| a + b.len() as u64)
            .max()
            .unwrap();
        assert!(end <= HIMEM_START);
    }
}
