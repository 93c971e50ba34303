//! An address bus: maps guest port-I/O or MMIO ranges to device models.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest accesses within its range. `offset` is relative
/// to the start of the range the device was inserted at.
pub trait BusDevice: Send {
    /// Fills `data` with what the guest reads at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Takes what the guest writes at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("device range {base:#x}+{len:#x} overlaps a device already on the bus")]
    Overlap { base: u64, len: u64 },
    #[error("device range at {base:#x} is empty or wraps around the address space")]
    InvalidRange { base: u64 },
}

/// A shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Entry {
    len: u64,
    device: SharedDevice,
}

/// Maps non-overlapping address ranges to devices. Built once, then shared
/// read-only by every vCPU thread.
#[derive(Clone, Default)]
pub struct Bus {
    // Keyed by the range's base address.
    ranges: BTreeMap<u64, Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges: Vec<_> = self.ranges.iter().map(|(b, e)| (*b, e.len)).collect();
        f.debug_struct("Bus").field("ranges", &ranges).finish()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base })?;
        // The only candidates for overlap are the nearest range starting
        // below `end` (it may reach into ours).
        if let Some((&other_base, other)) = self.ranges.range(..end).next_back() {
            if other_base + other.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Finds the device covering the whole access `[addr, addr + size)`.
    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let (&base, entry) = self.ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then_some((entry, offset))
    }

    /// Forwards a guest read. Returns false (and leaves `data` alone) when no
    /// device covers the access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Forwards a guest write. Returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, carrying on past a poisoned lock: a device model that
/// panicked once must not take every later guest access down with it.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn rejects_overlapping_and_empty_ranges() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x10, 0x10).unwrap();
        assert_eq!(
            bus.insert(recorder(), 0x18, 0x10),
            Err(BusError::Overlap {
                base: 0x18,
                len: 0x10
            })
        );
        assert_eq!(
            bus.insert(recorder(), 0x08, 0x09),
            Err(BusError::Overlap {
                base: 0x08,
                len: 0x09
            })
        );
        assert_eq!(
            bus.insert(recorder(), 0x00, 0x100),
            Err(BusError::Overlap {
                base: 0,
                len: 0x100
            })
        );
        assert_eq!(
            bus.insert(recorder(), 0x30, 0),
            Err(BusError::InvalidRange { base: 0x30 })
        );
        assert_eq!(
            bus.insert(recorder(), u64::MAX, 2),
            Err(BusError::InvalidRange { base: u64::MAX })
        );
        // Adjacent ranges on both sides are fine.
        bus.insert(recorder(), 0x08, 0x08).unwrap();
        bus.insert(recorder(), 0x20, 0x08).unwrap();
    }

    #[test]
    fn routes_accesses_with_offsets() {
        let mut bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![b'x'])]);
    }

    #[test]
    fn accesses_outside_or_straddling_a_device_miss() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x10).unwrap();
        let mut data = [0xaa_u8; 4];
        assert!(!bus.read(0xff, &mut data));
        assert!(
            !bus.read(0x10e, &mut data),
            "access runs past the device's end"
        );
        assert!(!bus.read(u64::MAX, &mut data));
        assert_eq!(data, [0xaa; 4]);
        assert!(!bus.write(0x110, &[1]));
    }
}
