//! The hardware-reduced ACPI power registers the FADT points at: sleep
//! control (how an ACPI kernel powers off: `poweroff` ends in a write of
//! SLP_TYP=S5 with SLP_EN), sleep status, and the reset register (`reboot=a`).
//! Three byte-wide I/O ports; no SCI, no wake events.

use crate::bus::BusDevice;
use crate::machine::MachineSignal;

/// First of the three ports (Cloud Hypervisor puts its sleep registers here
/// too; nothing on a PC claims it).
pub const ACPI_POWER_PORT: u64 = 0x600;
pub const ACPI_POWER_PORT_LEN: u64 = 3;
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
pub const SLEEP_STATUS_OFFSET: u64 = 1;
pub const RESET_OFFSET: u64 = 2;

/// What the DSDT's `\_S5_` gives as SLP_TYP for soft-off; the kernel writes
/// it back to the sleep control register.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The value the FADT tells the kernel to write to the reset register.
pub const RESET_VALUE: u8 = 0x0e;

// ACPI 6.5, 4.8.3.7: sleep control register layout.
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0b111 << SLEEP_TYPE_SHIFT;
const SLEEP_ENABLE: u8 = 1 << 5;
/// Sleep status: WAK_STS, which a kernel polls after entering a sleep state.
const WAKE_STATUS: u8 = 1 << 7;

#[derive(Debug)]
pub struct AcpiPower {
    power_off: Box<dyn MachineSignal>,
    reset: Box<dyn MachineSignal>,
}

impl AcpiPower {
    /// `power_off` is raised when the guest enters S5, `reset` when it
    /// writes the reset value.
    pub fn new(power_off: Box<dyn MachineSignal>, reset: Box<dyn MachineSignal>) -> Self {
        Self { power_off, reset }
    }

    fn signal(signal: &dyn MachineSignal, what: &str) {
        log::info!("guest requested {what} through ACPI");
        signal.raise();
    }
}

impl BusDevice for AcpiPower {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // A kernel that asked for a sleep state other than S5 (which rvmm
        // does not offer) waits for WAK_STS: report it woke at once.
        if let (SLEEP_STATUS_OFFSET, Some(first)) = (offset, data.first_mut()) {
            *first = WAKE_STATUS;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (SLEEP_CONTROL_OFFSET, [value]) if value & SLEEP_ENABLE != 0 => {
                let sleep_type = (value & SLEEP_TYPE_MASK) >> SLEEP_TYPE_SHIFT;
                if sleep_type == S5_SLEEP_TYPE {
                    Self::signal(self.power_off.as_ref(), "power-off");
                } else {
                    log::debug!("ACPI: sleep type {sleep_type} is not offered; ignored");
                }
            }
            (RESET_OFFSET, [RESET_VALUE]) => Self::signal(self.reset.as_ref(), "a reset"),
            _ => log::debug!("ACPI: ignored write {data:x?} at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    fn device() -> (AcpiPower, EventFd, EventFd) {
        let off = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = AcpiPower::new(
            Box::new(off.try_clone().unwrap()),
            Box::new(reset.try_clone().unwrap()),
        );
        (dev, off, reset)
    }

    #[test]
    fn entering_s5_powers_off() {
        let (mut dev, off, reset) = device();
        // What Linux's acpi_hw_extended_sleep writes for S5.
        dev.write(SLEEP_CONTROL_OFFSET, &[(5 << 2) | (1 << 5)]);
        assert_eq!(off.read().unwrap(), 1);
        assert!(reset.read().is_err());
    }

    #[test]
    fn other_sleep_states_and_writes_change_nothing() {
        let (mut dev, off, reset) = device();
        dev.write(SLEEP_CONTROL_OFFSET, &[(3 << 2) | (1 << 5)]);
        dev.write(SLEEP_CONTROL_OFFSET, &[5 << 2]);
        dev.write(SLEEP_CONTROL_OFFSET, &[0x34, 0x34]);
        dev.write(SLEEP_STATUS_OFFSET, &[0x34]);
        dev.write(RESET_OFFSET, &[RESET_VALUE.wrapping_add(1)]);
        assert!(off.read().is_err());
        assert!(reset.read().is_err());
        let mut status = [0u8; 4];
        dev.read(SLEEP_STATUS_OFFSET, &mut status);
        assert_eq!(status, [WAKE_STATUS, 0, 0, 0]);
    }

    #[test]
    fn the_reset_value_resets() {
        let (mut dev, off, reset) = device();
        dev.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(reset.read().unwrap(), 1);
        assert!(off.read().is_err());
    }
}
