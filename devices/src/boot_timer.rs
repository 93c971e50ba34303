//! The boot timer: a guest writes the byte 123 at offset 0 of this MMIO
//! region (Firecracker's protocol and address) when it reaches a point worth
//! timing, typically the first line of /init. The VMM is told through a
//! callback and logs how long the boot took.

use crate::bus::BusDevice;

/// Where the boot timer lives: the first page of the 32-bit MMIO hole.
pub const BOOT_TIMER_ADDRESS: u64 = 0xd000_0000;
pub const BOOT_TIMER_LEN: u64 = 0x1000;
/// The value a guest writes to say "boot done".
pub const MAGIC_BOOT_COMPLETE: u8 = 123;

/// Calls `on_boot` each time the guest writes the magic value.
pub struct BootTimer {
    on_boot: Box<dyn FnMut() + Send>,
}

impl BootTimer {
    pub fn new(on_boot: impl FnMut() + Send + 'static) -> Self {
        Self {
            on_boot: Box::new(on_boot),
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&MAGIC_BOOT_COMPLETE) {
            (self.on_boot)();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn only_the_magic_byte_at_offset_zero_counts() {
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = hits.clone();
        let mut timer = BootTimer::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        });
        timer.write(0, &[1]);
        timer.write(8, &[MAGIC_BOOT_COMPLETE]);
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        timer.write(0, &[MAGIC_BOOT_COMPLETE]);
        timer.write(0, &[MAGIC_BOOT_COMPLETE, 0, 0, 0]);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        let mut b = [0xff; 4];
        timer.read(0, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
