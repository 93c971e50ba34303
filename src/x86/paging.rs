//! Identity-mapping page tables for 64-bit entry: the first
//! [`IDENTITY_MAPPED_GIB`] GiB mapped 1:1 with 2 MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::layout::{IDENTITY_MAPPED_GIB, PDPT_START, PD_START, PML4_START};
use crate::memory::GuestMemoryMmap;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// One 4 KiB table's 512 entries.
fn table(entry: impl Fn(u64) -> u64) -> Vec<u8> {
    (0..512u64).flat_map(|i| entry(i).to_le_bytes()).collect()
}

/// The tables as (guest address, bytes) pairs, so they can be checked
/// without a guest.
pub fn identity_tables() -> Vec<(u64, Vec<u8>)> {
    let mut tables = vec![
        (
            PML4_START,
            table(|i| {
                if i == 0 {
                    PDPT_START | PRESENT | WRITABLE
                } else {
                    0
                }
            }),
        ),
        (
            PDPT_START,
            table(|i| {
                if i < IDENTITY_MAPPED_GIB {
                    (PD_START + i * 0x1000) | PRESENT | WRITABLE
                } else {
                    0
                }
            }),
        ),
    ];
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = table(|i| ((gib << 30) + (i << 21)) | PRESENT | WRITABLE | PAGE_SIZE_2M);
        tables.push((PD_START + gib * 0x1000, pd));
    }
    tables
}

/// Writes the tables into guest memory; CR3 then points at [`PML4_START`].
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    for (addr, bytes) in identity_tables() {
        mem.write_slice(&bytes, GuestAddress(addr))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables like the MMU would for a 2 MiB page.
    fn translate(tables: &[(u64, Vec<u8>)], virt: u64) -> Option<u64> {
        let entry = |table: u64, index: u64| -> u64 {
            let bytes = &tables.iter().find(|(a, _)| *a == table).unwrap().1;
            let at = (index * 8) as usize;
            u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
        };
        let pml4e = entry(PML4_START, (virt >> 39) & 0x1ff);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = entry(pml4e & !0xfff, (virt >> 30) & 0x1ff);
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = entry(pdpte & !0xfff, (virt >> 21) & 0x1ff);
        assert_ne!(pde & PAGE_SIZE_2M, 0);
        (pde & PRESENT != 0).then_some((pde & !0x1f_ffff & !(1 << 63)) | (virt & 0x1f_ffff))
    }

    #[test]
    fn maps_the_first_gibibytes_one_to_one() {
        let tables = identity_tables();
        for addr in [0, 0x1000, 0x100_0000, 0x3fff_ffff, 0x4000_0000, 0xffff_ffff] {
            assert_eq!(translate(&tables, addr), Some(addr), "{addr:#x}");
        }
        assert_eq!(translate(&tables, IDENTITY_MAPPED_GIB << 30), None);
    }

    #[test]
    fn tables_do_not_overlap() {
        let tables = identity_tables();
        for (i, (a, bytes)) in tables.iter().enumerate() {
            assert_eq!(bytes.len(), 4096);
            for (b, _) in &tables[i + 1..] {
                assert!(a + 4096 <= *b || b + 4096 <= *a);
            }
        }
    }
}
