//! Per-thread seccomp filters (seccompiler). The VMM thread and each vCPU
//! thread install their own allow-list before any guest code runs; anything
//! else kills the whole process (SIGSYS). The lists are what those threads
//! call once the VM is built: files and KVM objects are all open by then.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Which thread a filter is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The event loop: console input, disk requests, stopping the VM; and
    /// what the VM's devices add (see [`Serves`]).
    Vmm(Serves),
    /// A vCPU thread: KVM_RUN and device register accesses; reading its
    /// own state for a snapshot when the VM can take one.
    Vcpu { snapshots: bool },
    /// The API thread: its socket's clients, and the files a request names
    /// (checked, or written: the log and the metrics).
    Api,
    /// The short-lived thread that turns the PIT's tick reinjection off
    /// (`pit_setup::discard_missed_ticks`): that one ioctl, and
    /// letting vCPU 0's thread run on every CPU again.
    PitSetup,
}

/// What the event loop of a VM serves beyond its console: each adds the
/// system calls it needs, and a VM without it lets its threads make none
/// of them. (Every filter is also that much shorter for the kernel to
/// check at install, about 1 us per instruction on the PVM hosts.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Serves {
    /// virtio-blk disks: their reads, writes and flushes.
    pub disks: bool,
    /// virtio-net cards: their tap's offload settings.
    pub network: bool,
    /// A vsock device: Unix sockets for the guest's connections.
    pub vsock: bool,
    /// A console on a Unix socket (`--serial socket=`): its clients.
    pub serial_socket: bool,
    /// The API may take snapshots: the VM's interrupt controllers, PIT and
    /// clock are read on the event loop, each vCPU's state on its thread.
    pub snapshots: bool,
}

impl ThreadKind {
    /// The thread's name in messages.
    pub fn name(&self) -> &'static str {
        match self {
            ThreadKind::Vmm(_) => "event loop",
            ThreadKind::Vcpu { .. } => "vCPU",
            ThreadKind::Api => "API",
            ThreadKind::PitSetup => "PIT setup",
        }
    }
}

impl Serves {
    /// Everything a VM can have.
    pub const ALL: Serves = Serves {
        disks: true,
        network: true,
        vsock: true,
        serial_socket: true,
        snapshots: true,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("could not build the {name} seccomp filter: {1}", name = .0.name())]
    Build(ThreadKind, String),
    #[error("could not install the {name} seccomp filter: {1}; run with --no-seccomp to debug without it", name = .0.name())]
    Install(ThreadKind, String),
}

// The ioctl request numbers, made the way the kernel headers make them.
vmm_sys_util::ioctl_io_nr!(KVM_RUN, kvm_bindings::KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_REGS,
    kvm_bindings::KVMIO,
    0x81,
    kvm_bindings::kvm_regs
);
// What a paused vCPU reads of itself for a snapshot.
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_SREGS,
    kvm_bindings::KVMIO,
    0x83,
    kvm_bindings::kvm_sregs
);
vmm_sys_util::ioctl_iowr_nr!(
    KVM_GET_MSRS,
    kvm_bindings::KVMIO,
    0x88,
    kvm_bindings::kvm_msrs
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_LAPIC,
    kvm_bindings::KVMIO,
    0x8e,
    kvm_bindings::kvm_lapic_state
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_MP_STATE,
    kvm_bindings::KVMIO,
    0x98,
    kvm_bindings::kvm_mp_state
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_VCPU_EVENTS,
    kvm_bindings::KVMIO,
    0x9f,
    kvm_bindings::kvm_vcpu_events
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_DEBUGREGS,
    kvm_bindings::KVMIO,
    0xa1,
    kvm_bindings::kvm_debugregs
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_XSAVE,
    kvm_bindings::KVMIO,
    0xa4,
    kvm_bindings::kvm_xsave
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_XCRS,
    kvm_bindings::KVMIO,
    0xa6,
    kvm_bindings::kvm_xcrs
);
// What the event loop reads of the VM for a snapshot.
vmm_sys_util::ioctl_iowr_nr!(
    KVM_GET_IRQCHIP,
    kvm_bindings::KVMIO,
    0x62,
    kvm_bindings::kvm_irqchip
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_PIT2,
    kvm_bindings::KVMIO,
    0x9f,
    kvm_bindings::kvm_pit_state2
);
vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_CLOCK,
    kvm_bindings::KVMIO,
    0x7c,
    kvm_bindings::kvm_clock_data
);

/// System calls every rvmm thread makes: memory management by the allocator,
/// locks, signals (the vCPU kick), time, and thread exit.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The event loop's own: polling, closing what the VM owned.
const VMM_ONLY: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_getrandom,
    // Arming the timer that bounds a guest's shutdown after SIGTERM.
    libc::SYS_timerfd_settime,
];

/// The event loop's, with disks: their requests.
const DISKS: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    libc::SYS_fallocate,
    libc::SYS_lseek,
];

/// The event loop's, with a vsock device: connecting to PATH_PORT for a
/// guest (socket() itself is allowed for Unix sockets only, below),
/// writing a stream (std sends with MSG_NOSIGNAL), half-closing one.
const VSOCK: &[i64] = &[libc::SYS_connect, libc::SYS_sendto, libc::SYS_shutdown];

/// The event loop's, with a vsock device or a serial socket: taking
/// clients, and seeing whether one left.
const LISTENING: &[i64] = &[libc::SYS_accept4, libc::SYS_recvfrom];

/// The API thread's own: serving clients on its listening socket, opening
/// and checking the files requests name. No ioctl, no new socket.
const API_ONLY: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_openat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_getrandom,
    // The wake-up of the channel to a VM it starts.
    libc::SYS_eventfd2,
    // Writing a snapshot's files.
    libc::SYS_pwrite64,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
];

/// socket(2) for the VMM thread: Unix domain only.
fn unix_socket_rule() -> SeccompRule {
    let domain = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_UNIX as u64,
    )
    .expect("argument 0 exists");
    SeccompRule::new(vec![domain]).expect("one condition is a valid rule")
}

fn ioctl_rule(request: u64) -> SeccompRule {
    let condition = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
        .expect("argument 1 exists");
    SeccompRule::new(vec![condition]).expect("one condition is a valid rule")
}

/// The BPF program for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON.iter().map(|s| (*s, vec![])).collect();
    let allow = |rules: &mut BTreeMap<i64, Vec<SeccompRule>>, calls: &[i64]| {
        rules.extend(calls.iter().map(|s| (*s, vec![])));
    };
    let ioctls = match kind {
        ThreadKind::Vmm(serves) => {
            allow(&mut rules, VMM_ONLY);
            // Terminal settings, put back when the VM stops.
            let mut ioctls = vec![ioctl_rule(libc::TCGETS), ioctl_rule(libc::TCSETS)];
            if serves.disks {
                allow(&mut rules, DISKS);
            }
            if serves.vsock {
                allow(&mut rules, VSOCK);
                rules.insert(libc::SYS_socket, vec![unix_socket_rule()]);
            }
            if serves.vsock || serves.serial_socket {
                allow(&mut rules, LISTENING);
            }
            if serves.network {
                // A tap's offloads, set when its guest has negotiated them.
                ioctls.push(ioctl_rule(crate::net::TUNSETOFFLOAD()));
            }
            if serves.snapshots {
                ioctls.extend([KVM_GET_IRQCHIP(), KVM_GET_PIT2(), KVM_GET_CLOCK()].map(ioctl_rule));
            }
            ioctls
        }
        ThreadKind::Vcpu { snapshots } => {
            // The registers also for a stop's report: where the guest was.
            let mut ioctls = vec![ioctl_rule(KVM_RUN()), ioctl_rule(KVM_GET_REGS())];
            if snapshots {
                ioctls.extend(
                    [
                        KVM_GET_SREGS(),
                        KVM_GET_MSRS(),
                        KVM_GET_LAPIC(),
                        KVM_GET_MP_STATE(),
                        KVM_GET_VCPU_EVENTS(),
                        KVM_GET_DEBUGREGS(),
                        KVM_GET_XSAVE(),
                        KVM_GET_XCRS(),
                    ]
                    .map(ioctl_rule),
                );
            }
            ioctls
        }
        ThreadKind::Api => {
            allow(&mut rules, API_ONLY);
            Vec::new()
        }
        ThreadKind::PitSetup => {
            // It closes its copy of the VM's descriptor when done (std's
            // debug builds first check the descriptor with fcntl).
            rules.insert(libc::SYS_close, vec![]);
            rules.insert(libc::SYS_fcntl, vec![]);
            rules.insert(libc::SYS_sched_setaffinity, vec![]);
            vec![ioctl_rule(crate::pit_setup::KVM_REINJECT_CONTROL())]
        }
    };
    // (An empty rule list would allow every ioctl: none is left out instead.)
    if !ioctls.is_empty() {
        rules.insert(libc::SYS_ioctl, ioctls);
    }
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(kind, e.to_string()))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| SeccompError::Build(kind, e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Build(kind, e.to_string()))
}

thread_local! {
    /// Whether this thread runs under a filter (const: plain TLS).
    static FILTERED: Cell<bool> = const { Cell::new(false) };
}

/// Installs the filter for `kind` on the calling thread, for good.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let program = filter(kind)?;
    install_panic_hook();
    seccompiler::apply_filter(&program).map_err(|e| SeccompError::Install(kind, e.to_string()))?;
    FILTERED.with(|f| f.set(true));
    Ok(())
}

/// On a filtered thread, a panic is reported with its message and place
/// only: the standard hook's backtrace (with RUST_BACKTRACE set) opens files,
/// which no filter allows, and would turn the panic into a SIGSYS instead
/// of the orderly stop that follows it (`vcpu::stop_on_panic`).
fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if FILTERED.with(Cell::get) {
                let thread = std::thread::current();
                let name = thread.name().unwrap_or("rvmm");
                let _ = writeln!(std::io::stderr(), "thread '{name}' {info}");
            } else {
                previous(info);
            }
        }));
    });
}

// What each filter lets through and what it kills is checked on real
// processes in tests/seccomp.rs, and on a running rvmm's threads there and
// in tests/linux.rs.
