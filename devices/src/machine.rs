//! How a device tells the VMM that the guest asked the machine itself to
//! power off or reset (ACPI's sleep and reset registers, the i8042's reset
//! line).

use vmm_sys_util::eventfd::EventFd;

/// Raised on the thread of the vCPU whose register write asked for it, so
/// that the VMM can stop the VM before that vCPU runs another guest
/// instruction, as a machine that powers off does. A VMM that only needs
/// waking can use an eventfd.
pub trait MachineSignal: Send + std::fmt::Debug {
    fn raise(&self);
}

impl MachineSignal for EventFd {
    fn raise(&self) {
        if let Err(e) = self.write(1) {
            log::error!("could not signal the VMM: {e}");
        }
    }
}
