//! rvmm: a small virtual machine monitor on Linux KVM.
//!
//! [`vmm::run`] builds a VM from a [`config::VmConfig`] and runs it until the
//! guest resets or powers off, or the host stops it.

pub mod api;
pub mod boot;
pub mod config;
pub mod console;
pub mod console_output;
pub mod console_socket;
pub mod disks;
pub mod heap;
pub mod host;
pub mod host_memory;
pub mod hypervisor;
pub mod layout;
pub mod log_target;
pub mod memory;
pub mod net;
pub mod pit_setup;
pub mod running_vm;
pub mod seccomp;
pub mod signals;
pub mod snapshot;
pub mod sync;
pub mod unix_listener;
pub mod vcpu;
pub mod virtio_devices;
pub mod vm;
pub mod vm_control;
pub mod vmm;
pub mod vsock;
pub mod x86;

pub use config::VmConfig;
pub use vcpu::StopReason;
pub use vmm::{run, run_with, RunHooks, VmmError};
