//! How guest RAM is backed on the host: private anonymous mappings, lazy
//! (MAP_NORESERVE: a page is backed when first touched), at host addresses
//! aligned to 2 MiB as the guest-physical ones are. Only then can a
//! transparent huge page of the host be a single 2 MiB page in KVM's nested
//! page tables: one fault for the guest instead of 512. Linux before 6.7
//! (Debian 12's 6.1 among them) aligns no anonymous mapping by itself.
//!
//! Which pages are huge: with `--hugepages`, all of guest RAM. Otherwise
//! only what rvmm loads itself, the kernel and initrd, which are written
//! whole anyway (so a huge page costs nothing more), when the host's THP
//! mode is `madvise`; the guest's own, scattered use of memory keeps small
//! pages and costs only what it touches. The first 2 MiB (boot data, and
//! all of a small guest) always keeps small pages.

use std::sync::Arc;

use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::memory::GuestMemoryMmap;

/// A huge page, and the alignment of guest RAM on the host.
pub const HUGE_PAGE: usize = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HostMemoryError {
    #[error(
        "could not map {mib} MiB of host memory for the guest ({source}); use a smaller --mem"
    )]
    Map { mib: u64, source: std::io::Error },
    #[error("could not set up guest memory at {at:#x}: {why}")]
    Region { at: u64, why: String },
}

/// Guest RAM and the mappings behind it. Fields drop in the order they are
/// declared: the memory first, then what unmaps it.
pub struct GuestRam {
    memory: GuestMemoryMmap,
    _host: HostRam,
}

impl GuestRam {
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }
}

/// Unmaps guest RAM once nothing else can reach it (rvmm maps it itself,
/// so vm-memory's regions do not own their mappings).
struct HostRam {
    regions: Vec<(Arc<GuestRegionMmap<()>>, usize, usize)>,
}

impl Drop for HostRam {
    fn drop(&mut self) {
        for (region, addr, len) in self.regions.drain(..) {
            if Arc::into_inner(region).is_some() {
                // SAFETY: `addr..addr + len` is the mapping `map_aligned` made
                // for this region, and the region (the last handle to it) is gone.
                unsafe { libc::munmap(addr as *mut libc::c_void, len) };
            } else {
                // Still reachable from somewhere: leaving it mapped is safe.
                log::debug!("guest memory at {addr:#x} still in use at teardown; left mapped");
            }
        }
    }
}

/// Maps `len` bytes at a 2 MiB-aligned host address: a larger mapping,
/// trimmed at both ends.
fn map_aligned(len: usize) -> std::io::Result<usize> {
    let total = len + HUGE_PAGE;
    // SAFETY: a new private anonymous mapping at an address of the kernel's
    // choosing; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            total,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let base = base as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    let (head, tail) = (start - base, base + total - (start + len));
    // SAFETY: both trimmed pieces lie inside the mapping just made, outside
    // the part that is kept.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((start + len) as *mut libc::c_void, tail);
        }
    }
    Ok(start)
}

/// Maps guest RAM for `ranges` from a snapshot's memory file, privately
/// (copy-on-write: the file is never written, pages are read as the guest
/// touches them, and many VMs can map one file), 2 MiB aligned. The file
/// holds the ranges one after another and must be exactly that long.
pub fn map_guest_file(
    ranges: &[(GuestAddress, u64)],
    file: &std::fs::File,
) -> Result<GuestRam, HostMemoryError> {
    use std::os::fd::AsRawFd;
    let mut offset = 0u64;
    map_ranges(ranges, |len, mib| {
        let addr = map_aligned(len).map_err(|source| HostMemoryError::Map { mib, source })?;
        // SAFETY: replaces the reservation just made (ours alone) with a
        // private mapping of the file at the same place.
        let mapped = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if mapped == libc::MAP_FAILED {
            let source = std::io::Error::last_os_error();
            // SAFETY: the reservation made above, which nothing refers to.
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
            return Err(HostMemoryError::Map { mib, source });
        }
        offset += len as u64;
        Ok((addr, libc::MAP_PRIVATE | libc::MAP_NORESERVE))
    })
}

/// Maps guest RAM for `ranges` (guest address, length), lazily and 2 MiB
/// aligned. Clones of its memory may outlive it: a region still reachable
/// when the `GuestRam` goes is left mapped.
pub fn map_guest_ram(ranges: &[(GuestAddress, u64)]) -> Result<GuestRam, HostMemoryError> {
    map_ranges(ranges, |len, mib| {
        let addr = map_aligned(len).map_err(|source| HostMemoryError::Map { mib, source })?;
        Ok((
            addr,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        ))
    })
}

/// Guest RAM for `ranges`, each range's mapping made by `map(len, mib)`
/// (its address and flags).
fn map_ranges(
    ranges: &[(GuestAddress, u64)],
    mut map: impl FnMut(usize, u64) -> Result<(usize, i32), HostMemoryError>,
) -> Result<GuestRam, HostMemoryError> {
    let mib = ranges.iter().map(|(_, len)| len).sum::<u64>() >> 20;
    let mut host = HostRam {
        regions: Vec::new(),
    };
    for &(start, len) in ranges {
        let len = len as usize;
        let (addr, flags) = map(len, mib)?;
        let region_error = |why: String| HostMemoryError::Region { at: start.0, why };
        // SAFETY: `addr..addr + len` is a live mapping made above for this
        // region alone; `HostRam` unmaps it only when the region is gone.
        let mapping = unsafe {
            MmapRegion::build_raw(
                addr as *mut u8,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
            )
        };
        let mapping = match mapping {
            Ok(mapping) => mapping,
            Err(e) => {
                // SAFETY: the mapping made above, which nothing refers to yet.
                unsafe { libc::munmap(addr as *mut libc::c_void, len) };
                return Err(region_error(e.to_string()));
            }
        };
        let region = GuestRegionMmap::new(mapping, start)
            .ok_or_else(|| region_error("its range overflows".into()))?;
        host.regions.push((Arc::new(region), addr, len));
    }
    let arcs = host.regions.iter().map(|(r, _, _)| r.clone()).collect();
    let mem = GuestMemoryMmap::from_arc_regions(arcs).map_err(|e| HostMemoryError::Region {
        at: 0,
        why: e.to_string(),
    })?;
    Ok(GuestRam {
        memory: mem,
        _host: host,
    })
}

/// The host's transparent-huge-page mode: `always`, `madvise` or `never`.
fn thp_mode() -> Option<String> {
    let text = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok()?;
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(text[start..end].to_string())
}

/// madvise(`advice`) on guest RAM from 2 MiB up.
fn advise_above_first_huge_page(mem: &GuestMemoryMmap, advice: libc::c_int) -> std::io::Result<()> {
    for region in mem.iter() {
        let skip = HUGE_PAGE.saturating_sub(region.start_addr().0 as usize);
        let len = region.len() as usize;
        if skip >= len {
            continue;
        }
        // SAFETY: a range inside one live mapping of guest RAM; madvise only
        // changes how the kernel backs it.
        let rc = unsafe { libc::madvise(region.as_ptr().add(skip).cast(), len - skip, advice) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Asks for huge pages behind all of guest RAM (`--hugepages`).
pub fn advise_huge_pages(mem: &GuestMemoryMmap) {
    for region in mem.iter() {
        // SAFETY: the range is exactly one live mapping of guest RAM;
        // madvise only changes how the kernel backs it.
        let rc = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            )
        };
        if rc != 0 {
            log::warn!(
                "--hugepages: the host refused transparent huge pages ({}); check /sys/kernel/mm/transparent_hugepage/enabled",
                std::io::Error::last_os_error()
            );
            return;
        }
    }
}

/// Huge pages while rvmm loads the kernel and initrd (see the module's
/// notes); `LoadingPages::done` goes back to small pages.
pub struct LoadingPages<'a> {
    mem: &'a GuestMemoryMmap,
    active: bool,
}

/// Starts loading: huge pages above the first 2 MiB, when the host's THP
/// mode is `madvise` and `--hugepages` does not already give them.
pub fn huge_pages_while_loading(mem: &GuestMemoryMmap, hugepages: bool) -> LoadingPages<'_> {
    let active = !hugepages
        && thp_mode().as_deref() == Some("madvise")
        && advise_above_first_huge_page(mem, libc::MADV_HUGEPAGE)
            .inspect_err(|e| log::debug!("no huge pages for loading the kernel: {e}"))
            .is_ok();
    LoadingPages { mem, active }
}

impl LoadingPages<'_> {
    /// Loading is done: pages the guest touches from now on are small.
    pub fn done(self) {
        if self.active {
            if let Err(e) = advise_above_first_huge_page(self.mem, libc::MADV_NOHUGEPAGE) {
                log::debug!("cannot go back to small pages after loading: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn guest_ram_is_2_mib_aligned_on_the_host_and_usable() {
        let ranges = [
            (GuestAddress(0), 64 << 20),
            (GuestAddress(1 << 32), 6 << 20),
        ];
        let ram = map_guest_ram(&ranges).unwrap();
        let mem = ram.memory();
        for region in mem.iter() {
            assert_eq!(
                region.as_ptr() as usize % HUGE_PAGE,
                0,
                "{:#x}",
                region.start_addr().0
            );
        }
        mem.write_obj(0x1234_5678u32, GuestAddress((1 << 32) + 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress((1 << 32) + 8)).unwrap(),
            0x1234_5678
        );
        let addr = mem.iter().next().unwrap().as_ptr() as usize;
        drop(ram);
        // Unmapped: the address range is free again.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(
            !maps.lines().any(|l| l.starts_with(&format!("{addr:x}-"))),
            "guest RAM at {addr:#x} is still mapped"
        );
    }

    #[test]
    fn guest_ram_that_is_still_reachable_stays_mapped() {
        let ram = map_guest_ram(&[(GuestAddress(0), 4 << 20)]).unwrap();
        let other = ram.memory().clone();
        drop(ram);
        other.write_obj(7u8, GuestAddress(0x1000)).unwrap();
        assert_eq!(other.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 7);
    }
}
