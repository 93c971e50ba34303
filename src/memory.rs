//! Guest RAM: the layout of `--mem` around the 32-bit MMIO hole, its
//! registration with KVM, and the e820 map that tells the guest about it
//! (`host_memory` maps it on the host).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::layout::{EBDA_START, HIMEM_START, MMIO_HOLE_END, MMIO_HOLE_START};

/// Guest memory as rvmm uses it everywhere.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// The smallest `--mem` rvmm accepts (MiB): below 1 MiB sit the boot
/// structures, and a kernel needs room above it.
pub const MIN_MEM_MIB: u64 = 16;

const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("--mem {0} MiB is too small: rvmm needs at least {MIN_MEM_MIB} MiB")]
    TooSmall(u64),
    #[error(
        "--mem {mib} MiB does not fit in the guest's {phys_bits}-bit physical address space; use less memory"
    )]
    TooLarge { mib: u64, phys_bits: u8 },
    #[error("KVM refused guest memory region {slot} ({source}); use a smaller --mem")]
    Register {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

/// The guest-physical ranges that hold `mem_bytes` of RAM: everything below
/// the MMIO hole first, the rest from 4 GiB up.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(GuestAddress, u64)> {
    let low = mem_bytes.min(MMIO_HOLE_START);
    let mut ranges = vec![(GuestAddress(0), low)];
    if mem_bytes > low {
        ranges.push((GuestAddress(MMIO_HOLE_END), mem_bytes - low));
    }
    ranges
}

/// The host CPU's physical address width, which bounds guest-physical addresses.
pub fn host_phys_bits() -> u8 {
    let max_ext = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max_ext < 0x8000_0008 {
        return 36;
    }
    (std::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff) as u8
}

/// Checks `--mem` against the lower and upper limits and returns it in bytes.
pub fn checked_mem_bytes(mib: u64, phys_bits: u8) -> Result<u64, MemoryError> {
    if mib < MIN_MEM_MIB {
        return Err(MemoryError::TooSmall(mib));
    }
    let too_large = MemoryError::TooLarge { mib, phys_bits };
    let bytes = mib.checked_mul(MIB).ok_or(too_large)?;
    let (last_start, last_len) = *ram_ranges(bytes).last().expect("at least one range");
    let end = last_start.raw_value() + last_len;
    if phys_bits < 64 && end > 1u64 << phys_bits {
        return Err(MemoryError::TooLarge { mib, phys_bits });
    }
    Ok(bytes)
}

/// Tells KVM about every region of guest memory, one slot each.
pub fn register_guest_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let slot = slot as u32;
        let region_desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the mapping behind `region` stays alive as long as `mem`,
        // which the VM owns for its whole life, and no two slots overlap.
        unsafe { vm.set_user_memory_region(region_desc) }
            .map_err(|source| MemoryError::Register { slot, source })?;
    }
    Ok(())
}

/// Kinds of e820 entry, as the boot protocols number them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

/// One entry of the guest's memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// The memory map handed to the guest. Its entries tile exactly the RAM that
/// backs the guest: the legacy area below 1 MiB that holds the EBDA (with the
/// MP table), VGA and BIOS is reserved, the rest is usable.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let entry = |addr, end: u64, kind| E820Entry {
        addr,
        size: end - addr,
        kind,
    };
    let mut map = vec![
        entry(0, EBDA_START, E820Kind::Ram),
        entry(EBDA_START, HIMEM_START, E820Kind::Reserved),
    ];
    for (i, (start, len)) in ram_ranges(mem_bytes).into_iter().enumerate() {
        let start = if i == 0 {
            HIMEM_START
        } else {
            start.raw_value()
        };
        let end = if i == 0 { len } else { start + len };
        if end > start {
            map.push(entry(start, end, E820Kind::Ram));
        }
    }
    map
}

/// The highest guest-physical address (exclusive) below the MMIO hole that is RAM.
pub fn low_mem_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn total(map: &[E820Entry]) -> u64 {
        map.iter().map(|e| e.size).sum()
    }

    #[test]
    fn small_memory_is_one_range_below_the_hole() {
        let bytes = 512 * MIB;
        assert_eq!(ram_ranges(bytes), vec![(GuestAddress(0), bytes)]);
        let map = e820_map(bytes);
        assert_eq!(total(&map), bytes);
        assert_eq!(map.last().unwrap().addr + map.last().unwrap().size, bytes);
    }

    #[test]
    fn memory_above_the_hole_start_continues_at_4_gib() {
        for bytes in [
            MMIO_HOLE_START - MIB,
            MMIO_HOLE_START,
            MMIO_HOLE_START + MIB,
            16 * GIB,
        ] {
            let ranges = ram_ranges(bytes);
            assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), bytes);
            let map = e820_map(bytes);
            assert_eq!(
                total(&map),
                bytes,
                "e820 must cover exactly --mem ({bytes:#x})"
            );
            for e in &map {
                let end = e.addr + e.size;
                assert!(
                    end <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END,
                    "{e:?} crosses the hole"
                );
            }
            if bytes > MMIO_HOLE_START {
                assert_eq!(
                    ranges[1],
                    (GuestAddress(MMIO_HOLE_END), bytes - MMIO_HOLE_START)
                );
            } else {
                assert_eq!(ranges.len(), 1);
            }
        }
    }

    #[test]
    fn e820_entries_are_sorted_and_do_not_overlap() {
        let map = e820_map(5 * GIB);
        for pair in map.windows(2) {
            assert!(pair[0].addr + pair[0].size <= pair[1].addr, "{pair:?}");
        }
        assert_eq!(map[1].kind, E820Kind::Reserved);
    }

    #[test]
    fn mem_limits() {
        assert!(matches!(
            checked_mem_bytes(0, 46),
            Err(MemoryError::TooSmall(0))
        ));
        assert!(matches!(
            checked_mem_bytes(MIN_MEM_MIB - 1, 46),
            Err(MemoryError::TooSmall(_))
        ));
        assert_eq!(
            checked_mem_bytes(MIN_MEM_MIB, 46).unwrap(),
            MIN_MEM_MIB * MIB
        );
        assert!(matches!(
            checked_mem_bytes(u64::MAX, 46),
            Err(MemoryError::TooLarge { .. })
        ));
        // 64 TiB plus the hole does not fit in 46 bits.
        assert!(matches!(
            checked_mem_bytes(64 << 20, 46),
            Err(MemoryError::TooLarge { .. })
        ));
        assert!(checked_mem_bytes(16 << 10, 46).is_ok());
    }
}
