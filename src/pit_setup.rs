//! Turning the PIT's tick reinjection off while the guest runs, without
//! stalling vCPU 0.
//!
//! KVM creates the PIT replaying the ticks a guest misses; rvmm has it
//! drop them instead (QEMU's `lost_tick_policy=discard`; Linux keeps time
//! by kvm-clock and the TSC, not by counting PIT ticks). Turning replay
//! off waits for two normal grace periods of the VM's interrupt SRCU, up
//! to 8-16 ms each on the PVM hosts. KVM turns it off itself when it
//! destroys the VM, so left alone that wait is most of a VMM's slow exits
//! (sched_switch stacks: `kvm_free_pit` -> `kvm_pit_set_reinject` ->
//! `synchronize_srcu`); on the VMM thread it would delay the first
//! `KVM_RUN` as much. So a thread of its own waits while the guest runs.
//!
//! The wait holds the PIT's lock, and vCPU 0 (the PIT timer's owner)
//! takes that lock when it enters the guest on a CPU other than the one it
//! last ran on (`__kvm_migrate_pit_timer`), and on its first entry. Had it
//! to wait, a restored guest answered 15 ms late in a third of the runs
//! (sched_switch: `__mutex_lock` <- `__kvm_migrate_pit_timer` <-
//! `kvm_arch_vcpu_ioctl_run`). So vCPU 0's thread stays on one CPU until
//! the PIT is set up, and the setup starts once vCPU 0 is in the guest.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{kvm_reinject_control, KVMIO};
use kvm_ioctls::VmFd;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_io_nr;

// KVM_REINJECT_CONTROL is _IO in KVM's headers although it takes a pointer
// (kvm-ioctls does not wrap it).
ioctl_io_nr!(KVM_REINJECT_CONTROL, KVMIO, 0x71);

/// How long after vCPU 0 says it enters the guest the setup starts: ample
/// for `KVM_RUN` to reach the guest (microseconds), and off every path
/// that is timed, since the thread only waits.
const AFTER_VCPU0_ENTERS: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum PitSetupError {
    #[error("cannot start the thread that sets up the PIT: {0}; the host may be out of memory or threads")]
    Thread(std::io::Error),
}

/// The thread [`discard_missed_ticks`] starts.
pub struct PitSetup {
    /// Closes (or yields) once the thread runs under its filter, or has ended.
    filtered: Receiver<()>,
    /// Taken by vCPU 0's thread; dropped, it lets the setup go ahead.
    vcpu0: Option<Vcpu0Entry>,
    thread: JoinHandle<()>,
}

impl PitSetup {
    /// Returns once the thread runs under its seccomp filter (or has
    /// ended): the VM must not run a guest instruction before.
    pub fn wait_until_filtered(&self) {
        let _ = self.filtered.recv();
    }

    /// What vCPU 0's thread reports through (once; None after).
    pub fn vcpu0_entry(&mut self) -> Option<Vcpu0Entry> {
        self.vcpu0.take()
    }

    /// Waits for the thread to end.
    pub fn join(mut self) {
        drop(self.vcpu0.take());
        let _ = self.thread.join();
    }
}

/// vCPU 0's thread, held on one CPU until the PIT is set up.
struct Pinned {
    tid: libc::pid_t,
    /// The CPUs it may run on again afterwards.
    allowed: libc::cpu_set_t,
}

impl Pinned {
    /// Lets the thread run anywhere it could before.
    fn release(&self) {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: sets the affinity of a thread of this process from a
        // cpu_set_t that lives for the call.
        if unsafe { libc::sched_setaffinity(self.tid, size, &self.allowed) } != 0 {
            let err = std::io::Error::last_os_error();
            // ESRCH: the thread has ended already (a guest that stopped at
            // once); nothing stays pinned.
            if err.raw_os_error() != Some(libc::ESRCH) {
                log::warn!("vCPU 0 stays on one host CPU: {err}");
            }
        }
    }
}

/// vCPU 0's side: pins its thread, then says when it enters the guest.
pub struct Vcpu0Entry {
    entering: SyncSender<Option<Pinned>>,
    pinned: Option<Pinned>,
}

impl Vcpu0Entry {
    /// On vCPU 0's thread, before its seccomp filter: keeps the thread on
    /// the CPU it runs on now. If it cannot, vCPU 0 may wait for the PIT
    /// once; nothing else changes.
    pub fn pin_this_thread(&mut self) {
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: cpu_set_t is plain data; all zeroes is an empty set.
        let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: gettid, sched_getcpu and the affinity calls act on this
        // thread only, and read or write the cpu_set_t values given.
        unsafe {
            let tid = libc::gettid();
            let cpu = libc::sched_getcpu();
            if cpu < 0 || libc::sched_getaffinity(tid, size, &mut allowed) != 0 {
                return;
            }
            let mut here: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut here);
            if libc::sched_setaffinity(tid, size, &here) == 0 {
                self.pinned = Some(Pinned { tid, allowed });
            }
        }
    }

    /// On vCPU 0's thread, just before its first `KVM_RUN`.
    pub fn entering_guest(self) {
        let _ = self.entering.send(self.pinned);
    }
}

/// Starts the thread that turns the PIT's reinjection off (see the module
/// comment); the caller joins it when the VM has stopped. It runs after any
/// `KVM_SET_PIT2`: both hold the PIT's lock.
pub fn discard_missed_ticks(vm: &VmFd, sandboxed: bool) -> Result<PitSetup, PitSetupError> {
    // SAFETY: `vm` owns this descriptor, open for the whole call.
    let vm_fd = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) }
        .try_clone_to_owned()
        .map_err(PitSetupError::Thread)?;
    let (now_filtered, filtered) = mpsc::sync_channel(1);
    let (entering, vcpu0_enters) = mpsc::sync_channel::<Option<Pinned>>(1);
    let thread = std::thread::Builder::new()
        .name("rvmm-pit".into())
        .spawn(move || {
            if sandboxed {
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::PitSetup) {
                    log::warn!("{e}; the PIT's missed ticks stay replayed");
                    drop(now_filtered);
                    // vCPU 0 pins itself all the same: let it go.
                    if let Ok(Some(pinned)) = vcpu0_enters.recv() {
                        pinned.release();
                    }
                    return;
                }
            }
            let _ = now_filtered.send(());
            // vCPU 0's thread sends once it has passed its gate (a VM
            // restored paused too), or drops its side if it never starts;
            // `PitSetup::join` drops it if no vCPU 0 took it.
            let pinned = match vcpu0_enters.recv() {
                Ok(pinned) => {
                    std::thread::sleep(AFTER_VCPU0_ENTERS);
                    pinned
                }
                Err(_) => None,
            };
            turn_reinjection_off(&vm_fd);
            if let Some(pinned) = pinned {
                pinned.release();
            }
        })
        .map_err(PitSetupError::Thread)?;
    Ok(PitSetup {
        filtered,
        vcpu0: Some(Vcpu0Entry {
            entering,
            pinned: None,
        }),
        thread,
    })
}

fn turn_reinjection_off(vm_fd: &OwnedFd) {
    let control = kvm_reinject_control {
        pit_reinject: 0,
        ..Default::default()
    };
    // SAFETY: `vm_fd` is an open VM descriptor, and KVM reads one
    // kvm_reinject_control from the pointer, which outlives the call.
    let ret = unsafe { ioctl_with_ref(vm_fd, KVM_REINJECT_CONTROL(), &control) };
    if ret < 0 {
        // Not fatal: the PIT keeps replaying missed ticks, and the VM's
        // destruction pays the wait instead.
        log::warn!(
            "KVM could not turn the PIT's tick reinjection off: {}",
            std::io::Error::last_os_error()
        );
    }
}
