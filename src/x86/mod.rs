//! x86_64 CPU state at the first guest instruction.

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod mptable;
pub mod paging;
pub mod regs;
