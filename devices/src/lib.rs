//! Device models for rvmm.
//!
//! Nothing here knows about KVM: devices are reached through [`bus::Bus`]
//! (port I/O or MMIO accesses forwarded by the VMM) and signal the VMM through
//! eventfds (interrupts) and [`machine::MachineSignal`]s (power-off and reset
//! requests). That keeps every model testable in an ordinary process.

pub mod acpi_power;
pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod machine;
pub mod serial;

pub use bus::{Bus, BusDevice, BusError};
pub mod virtio;
