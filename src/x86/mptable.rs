//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI
//! learns its CPUs, its IOAPIC and how ISA interrupts are wired. Placed at
//! the start of the EBDA, where Linux looks for it.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::layout::{EBDA_START, HIMEM_START};
use crate::memory::GuestMemoryMmap;

pub const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
pub const LAPIC_ADDRESS: u32 = 0xfee0_0000;
/// Pins of KVM's in-kernel IOAPIC.
pub const IOAPIC_PINS: u8 = 24;
/// APIC IDs 0..cpus go to the CPUs; the IOAPIC takes the next, and 0xff is broadcast.
pub const MAX_CPUS: u8 = 254;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REVISION: u8 = 4;
/// Family 6 signature and FPU + APIC feature flags, as a BIOS would report.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("the MP table has room for at most {MAX_CPUS} CPUs, not {0}")]
    TooManyCpus(u8),
    #[error("could not write the MP table into guest memory: {0}")]
    Write(GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b))
}

/// The floating pointer at [`EBDA_START`] followed by the configuration table.
pub fn mptable_bytes(cpus: u8) -> Result<Vec<u8>, MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(cpus));
    }
    let table_addr = EBDA_START as u32 + 16;
    let ioapic_id = cpus;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend([ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, 0]);
    entries.extend(b"ISA   ");
    count += 1;
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend(IOAPIC_ADDRESS.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // ISA IRQ n arrives on IOAPIC pin n, with the bus's default polarity.
        entries.extend([
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            pin,
            ioapic_id,
            pin,
        ]);
        count += 1;
    }
    // LINT0 of every CPU takes the 8259's ExtINT, LINT1 takes NMI.
    entries.extend([ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend([ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend(b"PCMP");
    table.extend(((44 + entries.len()) as u16).to_le_bytes());
    table.push(SPEC_REVISION);
    table.push(0); // checksum, below
    table.extend(b"RVMM    ");
    table.extend(b"RVMM MICROVM");
    table.extend(0u32.to_le_bytes()); // no OEM table
    table.extend(0u16.to_le_bytes());
    table.extend(count.to_le_bytes());
    table.extend(LAPIC_ADDRESS.to_le_bytes());
    table.extend([0u8; 4]); // no extended table, reserved
    table.extend(entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend(b"_MP_");
    floating.extend(table_addr.to_le_bytes());
    floating.extend([1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    floating.extend(table);
    Ok(floating)
}

/// Writes the MP table for `cpus` CPUs at [`EBDA_START`].
pub fn write_mptable(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    let bytes = mptable_bytes(cpus)?;
    debug_assert!(EBDA_START + bytes.len() as u64 <= HIMEM_START);
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_pointer() {
        for cpus in [1, 4, MAX_CPUS] {
            let bytes = mptable_bytes(cpus).unwrap();
            assert_eq!(&bytes[..4], b"_MP_");
            assert_eq!(sum(&bytes[..16]), 0, "floating pointer checksum");
            let table_addr = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
            let table = &bytes[(table_addr - EBDA_START) as usize..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "configuration table checksum");
            assert!(EBDA_START + bytes.len() as u64 <= HIMEM_START);
        }
    }

    #[test]
    fn lists_each_cpu_once_with_one_bootstrap() {
        let bytes = mptable_bytes(4).unwrap();
        let table = &bytes[16..];
        let count = u16::from_le_bytes([table[34], table[35]]) as usize;
        let mut at = 44;
        let (mut cpus, mut bsp, mut ioapics, mut irqs) = (vec![], 0, 0, 0);
        for _ in 0..count {
            match table[at] {
                ENTRY_PROCESSOR => {
                    cpus.push(table[at + 1]);
                    if table[at + 3] & CPU_BOOTSTRAP != 0 {
                        bsp += 1;
                    }
                    at += 20;
                }
                ENTRY_IOAPIC => {
                    assert_eq!(
                        u32::from_le_bytes(table[at + 4..at + 8].try_into().unwrap()),
                        IOAPIC_ADDRESS
                    );
                    assert_eq!(table[at + 1], 4, "IOAPIC ID follows the CPUs'");
                    ioapics += 1;
                    at += 8;
                }
                ENTRY_IO_INTERRUPT => {
                    assert_eq!(table[at + 5], table[at + 7], "ISA IRQ n on pin n");
                    irqs += 1;
                    at += 8;
                }
                _ => at += 8,
            }
        }
        assert_eq!(at, table.len());
        assert_eq!(cpus, [0, 1, 2, 3]);
        assert_eq!((bsp, ioapics, irqs), (1, 1, IOAPIC_PINS as usize));
    }

    #[test]
    fn rejects_impossible_cpu_counts() {
        assert!(mptable_bytes(0).is_err());
        assert!(mptable_bytes(255).is_err());
    }
}
