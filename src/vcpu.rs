//! vCPU threads: the KVM_RUN loop, the handling of each exit, and stopping a
//! running vCPU from another thread.
//!
//! A vCPU is stopped as Firecracker does it: another thread only sends the
//! kick signal; the handler, running on the vCPU's own thread, sets that
//! vCPU's `immediate_exit`, so no thread writes into another's `kvm_run`.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::pit_setup::Vcpu0Entry;
use kvm_ioctls::{VcpuExit, VcpuFd};
use rvmm_devices::machine::MachineSignal;
use rvmm_devices::Bus;
use vmm_sys_util::eventfd::EventFd;

/// Why the VM stopped. The first reason recorded wins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest reset the machine (i8042, triple fault, KVM reset event).
    Reset,
    /// The guest powered off, or its only vCPU halted for good.
    Shutdown,
    /// The host asked rvmm to stop (SIGINT, SIGTERM).
    Signal(i32),
    /// rvmm could not go on.
    Error(StopError),
}

/// Why rvmm could not go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StopError {
    #[error("vCPU {vcpu} stopped: {cause}{}", guest_rip(*.rip))]
    Vcpu {
        vcpu: u8,
        cause: VcpuError,
        /// Where the guest was, when its registers could be read.
        rip: Option<u64>,
    },
    #[error("could not start the thread of vCPU {vcpu}: {reason}")]
    VcpuThread { vcpu: u8, reason: String },
    #[error("could not sandbox the VMM thread: {0}")]
    Sandbox(String),
    #[error("the event loop failed: {0}")]
    EventLoop(String),
    #[error("the event loop panicked (a bug in rvmm): {0}")]
    EventLoopPanicked(String),
}

fn guest_rip(rip: Option<u64>) -> String {
    rip.map(|r| format!(" at guest RIP {r:#x}"))
        .unwrap_or_default()
}

/// Why one vCPU could not go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VcpuError {
    #[error("the guest reported a crash")]
    GuestCrashed,
    #[error("unknown KVM system event {0}")]
    UnknownSystemEvent(u32),
    #[error("KVM could not enter the guest (hardware entry failure reason {0:#x})")]
    EntryFailed(u64),
    #[error("unexpected KVM exit {0}")]
    UnexpectedExit(String),
    #[error("KVM_RUN failed: {0}")]
    Run(std::io::ErrorKind, i32),
    #[error("KVM internal error ({0})")]
    Internal(&'static str),
    #[error(
        "could not install the vCPU seccomp filter: {0}; run with --no-seccomp to debug without it"
    )]
    Seccomp(String),
    #[error("the vCPU thread panicked (a bug in rvmm): {0}")]
    Panicked(String),
}

impl StopReason {
    /// rvmm's exit status for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            StopReason::Reset | StopReason::Shutdown => 0,
            StopReason::Signal(signal) => 128 + signal,
            StopReason::Error(_) => 1,
        }
    }
}

/// Shared between the vCPU threads and the VMM's event loop: who stopped the
/// VM and why, and an eventfd that wakes the event loop when it happens.
#[derive(Debug)]
pub struct VmStop {
    reason: Mutex<Option<StopReason>>,
    stopping: AtomicBool,
    evt: EventFd,
}

impl VmStop {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` (unless one is already recorded) and wakes the VMM.
    pub fn request(&self, reason: StopReason) {
        let mut current = crate::sync::lock(&self.reason);
        if current.is_none() {
            *current = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        // If the eventfd counter is full the VMM is already awake.
        let _ = self.evt.write(1);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<StopReason> {
        crate::sync::lock(&self.reason).clone()
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// The guest's own power-off or reset, raised by its device (ACPI, i8042)
/// on the vCPU thread that wrote the register. The stop is recorded there
/// and then, so that vCPU stops before it would enter the guest again, as
/// a machine that powers off runs no further instruction; the event loop
/// is woken to stop the others.
#[derive(Debug)]
pub struct GuestStop {
    stop: Arc<VmStop>,
    reason: StopReason,
}

impl GuestStop {
    pub fn new(stop: &Arc<VmStop>, reason: StopReason) -> Box<Self> {
        Box::new(Self {
            stop: stop.clone(),
            reason,
        })
    }
}

impl MachineSignal for GuestStop {
    fn raise(&self) {
        self.stop.request(self.reason.clone());
    }
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    Continue,
    Stop(StopReason),
    /// KVM_EXIT_INTERNAL_ERROR: the details are in the vCPU's kvm_run.
    InternalError,
    /// This vCPU cannot go on.
    Fail(VcpuError),
}

use kvm_bindings::{
    KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};

/// Handles one exit from KVM_RUN. Unknown port and MMIO addresses read as
/// all-ones and ignore writes: a guest probing for hardware must not stop.
pub fn handle_exit(exit: VcpuExit<'_>, io_bus: &Bus, mmio_bus: &Bus) -> ExitAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !io_bus.read(u64::from(port), data) {
                log::debug!("unhandled {}-byte read of port {port:#x}", data.len());
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !io_bus.write(u64::from(port), data) {
                log::debug!("unhandled write of {data:x?} to port {port:#x}");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio_bus.read(addr, data) {
                log::debug!("unhandled {}-byte MMIO read at {addr:#x}", data.len());
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio_bus.write(addr, data) {
                log::debug!("unhandled MMIO write of {data:x?} at {addr:#x}");
            }
        }
        VcpuExit::Shutdown => {
            log::info!("guest triple-faulted or shut down the CPU; treating it as a reset");
            return ExitAction::Stop(StopReason::Reset);
        }
        VcpuExit::SystemEvent(kind, _) => {
            return ExitAction::Stop(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::Shutdown,
                KVM_SYSTEM_EVENT_RESET => StopReason::Reset,
                KVM_SYSTEM_EVENT_CRASH => return ExitAction::Fail(VcpuError::GuestCrashed),
                other => return ExitAction::Fail(VcpuError::UnknownSystemEvent(other)),
            });
        }
        VcpuExit::Hlt => return ExitAction::Stop(StopReason::Shutdown),
        VcpuExit::FailEntry(reason, _) => return ExitAction::Fail(VcpuError::EntryFailed(reason)),
        VcpuExit::InternalError => return ExitAction::InternalError,
        other => return ExitAction::Fail(VcpuError::UnexpectedExit(format!("{other:?}"))),
    }
    ExitAction::Continue
}

/// Names of KVM_INTERNAL_ERROR sub-errors, for messages.
fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        KVM_INTERNAL_ERROR_EMULATION => {
            "emulation failure: the host could not emulate a guest instruction"
        }
        KVM_INTERNAL_ERROR_SIMUL_EX => "simultaneous exception",
        KVM_INTERNAL_ERROR_DELIVERY_EV => "delivery event failed",
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown sub-error",
    }
}

/// Holds vCPU threads back until the VMM thread has sandboxed itself, so no
/// guest instruction runs before every thread is filtered.
#[derive(Default)]
pub struct StartGate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl StartGate {
    pub fn open(&self) {
        *crate::sync::lock(&self.open) = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = crate::sync::lock(&self.open);
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Pausing the VM: every vCPU leaves the guest (kicked out of KVM_RUN) and
/// waits outside it until resumed, or until the VM stops.
#[derive(Default)]
pub struct Pause {
    /// Read on every exit: the fast path takes no lock.
    requested: std::sync::atomic::AtomicBool,
    parked: Mutex<Parked>,
    changed: Condvar,
    /// The vCPU threads, to kick.
    threads: Mutex<Vec<libc::pthread_t>>,
}

/// A snapshot's request: the MSRs to read, and each vCPU's state once it
/// has read it.
type Capture = (
    Arc<Vec<u32>>,
    Vec<Option<Result<crate::snapshot::VcpuState, String>>>,
);

/// The paused vCPUs, and a snapshot's request to read their state.
#[derive(Default)]
struct Parked {
    count: usize,
    capture: Option<Capture>,
}

impl Pause {
    /// Adds a vCPU thread to kick when pausing.
    pub fn add_thread(&self, thread: libc::pthread_t) {
        crate::sync::lock(&self.threads).push(thread);
    }

    /// Pauses the vCPUs; true once all `count` of them are out of the
    /// guest, false if they were not within `limit` (they still will be).
    pub fn pause(&self, count: usize, limit: std::time::Duration) -> bool {
        self.requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for &thread in crate::sync::lock(&self.threads).iter() {
            // SAFETY: the threads are the VM's vCPU threads, which live until
            // they are joined after the event loop (this caller) ends.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
        }
        let parked = crate::sync::lock(&self.parked);
        let (parked, _) = self
            .changed
            .wait_timeout_while(parked, limit, |parked| parked.count < count)
            .unwrap_or_else(|e| e.into_inner());
        parked.count >= count
    }

    /// On a paused VM: every one of the `count` vCPUs reads its own state
    /// (on its own thread, as KVM wants) with the MSRs `msr_indices`.
    pub fn capture_vcpus(
        &self,
        count: usize,
        msr_indices: Vec<u32>,
        limit: std::time::Duration,
    ) -> Result<Vec<crate::snapshot::VcpuState>, String> {
        if !self.is_paused() {
            return Err("the VM is not paused".into());
        }
        let mut parked = crate::sync::lock(&self.parked);
        parked.capture = Some((Arc::new(msr_indices), (0..count).map(|_| None).collect()));
        self.changed.notify_all();
        let (mut parked, _) = self
            .changed
            .wait_timeout_while(parked, limit, |p| {
                p.capture
                    .as_ref()
                    .is_some_and(|(_, results)| results.iter().any(Option::is_none))
            })
            .unwrap_or_else(|e| e.into_inner());
        let (_, results) = parked.capture.take().expect("set above");
        results
            .into_iter()
            .enumerate()
            .map(|(id, result)| {
                result.unwrap_or_else(|| Err(format!("vCPU {id} did not give its state in time")))
            })
            .collect()
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.requested
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let _parked = crate::sync::lock(&self.parked);
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// On a vCPU thread between two runs: waits while the VM is paused and
    /// not stopping, reading the state of vCPU `id` (`fd`) when asked.
    fn park_while_paused(&self, stop: &VmStop, id: u8, fd: &VcpuFd) {
        if self.is_paused() {
            self.park(stop, id, fd);
        }
    }

    /// Out of line: a vCPU's state is several KiB, and inlined into the
    /// vCPU loop it would make every vCPU thread's stack that much deeper
    /// (and resident) for the VM's life, paused or not.
    #[cold]
    #[inline(never)]
    fn park(&self, stop: &VmStop, id: u8, fd: &VcpuFd) {
        let mut parked = crate::sync::lock(&self.parked);
        parked.count += 1;
        self.changed.notify_all();
        while self.is_paused() && !stop.is_stopping() {
            if let Some((msrs, results)) = parked.capture.as_mut() {
                if let Some(slot @ None) = results.get_mut(usize::from(id)) {
                    *slot = Some(crate::snapshot::kvm::capture_vcpu(fd, msrs));
                    self.changed.notify_all();
                }
            }
            // Woken by resume or a capture; a stop is seen within the timeout.
            parked = self
                .changed
                .wait_timeout(parked, std::time::Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        parked.count -= 1;
    }

    /// Starts the VM paused (a restored snapshot that is not to resume).
    pub fn start_paused(&self) {
        self.requested
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// One vCPU, ready to run on its own thread.
pub struct Vcpu {
    pub id: u8,
    fd: VcpuFd,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

thread_local! {
    /// The `immediate_exit` byte of the vCPU this thread runs, while it runs
    /// it. Const-initialized and without a destructor: plain TLS, safe to
    /// read in a signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick handler, on the kicked vCPU's own thread: KVM_RUN returns EINTR
/// if it was running, and returns at once if it was about to enter.
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let immediate_exit = IMMEDIATE_EXIT.with(Cell::get);
    if !immediate_exit.is_null() {
        // SAFETY: the pointer is this thread's own vCPU's kvm_run byte, set
        // while the VcpuFd (and so its mapping) is alive and cleared before
        // the thread lets go of it; a byte store is atomic on x86.
        unsafe { std::ptr::write_volatile(immediate_exit, 1) };
    }
}

/// Installs the handler for [`kick_signal`]. Called once, before any vCPU
/// thread starts.
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Runs `body`; a panic in it becomes a stop of the VM with `VcpuError::Panicked`
/// for `vcpu`, instead of a thread that dies and a VM that never stops.
pub fn stop_on_panic(vcpu: u8, stop: &VmStop, body: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(body)) {
        stop.request(StopReason::Error(StopError::Vcpu {
            vcpu,
            cause: VcpuError::Panicked(panic_message(panic.as_ref())),
            rip: None,
        }));
    }
}

/// The text of a panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

impl Vcpu {
    pub fn new(id: u8, fd: VcpuFd, io_bus: Arc<Bus>, mmio_bus: Arc<Bus>) -> Self {
        Self {
            id,
            fd,
            io_bus,
            mmio_bus,
        }
    }

    /// Runs the guest until this vCPU or another one stops the VM, waiting
    /// outside the guest while it is paused.
    fn run(&mut self, stop: &VmStop, pause: &Pause) {
        while !stop.is_stopping() {
            pause.park_while_paused(stop, self.id, &self.fd);
            let action = match self.fd.run() {
                Ok(exit) => handle_exit(exit, &self.io_bus, &self.mmio_bus),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    ExitAction::Continue
                }
                Err(e) => {
                    let io = std::io::Error::from_raw_os_error(e.errno());
                    ExitAction::Fail(VcpuError::Run(io.kind(), e.errno()))
                }
            };
            let reason = match action {
                ExitAction::Continue => continue,
                ExitAction::Stop(reason) => reason,
                ExitAction::Fail(cause) => self.error(cause),
                ExitAction::InternalError => {
                    // SAFETY: the exit was KVM_EXIT_INTERNAL_ERROR, so `internal`
                    // is the member of the exit union that KVM filled in.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    self.error(VcpuError::Internal(internal_error_name(suberror)))
                }
            };
            stop.request(reason);
            return;
        }
    }

    /// `cause`, with where the guest was, so a person can look it up.
    fn error(&mut self, cause: VcpuError) -> StopReason {
        StopReason::Error(StopError::Vcpu {
            vcpu: self.id,
            cause,
            rip: self.fd.get_regs().ok().map(|regs| regs.rip),
        })
    }

    /// Starts the vCPU on a thread named `rvmm-vcpu-N`. The thread installs
    /// the seccomp filter `sandbox` names (if any), then waits for `gate`
    /// to open.
    pub fn start(
        mut self,
        stop: Arc<VmStop>,
        gate: Arc<StartGate>,
        pause: Arc<Pause>,
        sandbox: Option<crate::seccomp::ThreadKind>,
        mut pit_entry: Option<Vcpu0Entry>,
    ) -> std::io::Result<VcpuHandle> {
        let id = self.id;
        let thread = std::thread::Builder::new()
            .name(format!("rvmm-vcpu-{id}"))
            .spawn(move || {
                if let Some(entry) = &mut pit_entry {
                    entry.pin_this_thread();
                }
                if let Some(kind) = sandbox {
                    if let Err(e) = crate::seccomp::apply(kind) {
                        stop.request(StopReason::Error(StopError::Vcpu {
                            vcpu: id,
                            cause: VcpuError::Seccomp(e.to_string()),
                            rip: None,
                        }));
                    }
                }
                gate.wait();
                if let Some(entry) = pit_entry.take() {
                    entry.entering_guest();
                }
                let immediate_exit = &mut self.fd.get_kvm_run().immediate_exit as *mut u8;
                IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
                stop_on_panic(id, &stop, || self.run(&stop, &pause));
                IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
                // The vCPU (and its kvm_run mapping) goes back to the VMM.
                self
            })?;
        Ok(VcpuHandle { id, thread })
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub id: u8,
    thread: JoinHandle<Vcpu>,
}

/// The thread of a vCPU ended in a panic that [`stop_on_panic`] did not catch.
#[derive(Debug, thiserror::Error)]
#[error("the thread of vCPU {0} panicked outside its run loop")]
pub struct VcpuThreadPanicked(pub u8);

impl VcpuHandle {
    /// The thread, to kick it when pausing.
    pub fn pthread(&self) -> libc::pthread_t {
        self.thread.as_pthread_t()
    }

    /// Makes the vCPU leave KVM_RUN now, or not enter it again: its own
    /// thread's signal handler does the work (see [`on_kick`]).
    pub fn kick(&self) {
        if !self.thread.is_finished() {
            // SAFETY: the pthread_t is valid until the thread is joined, which
            // needs `self`; the handler only sets that thread's own byte.
            unsafe { libc::pthread_kill(self.thread.as_pthread_t(), kick_signal()) };
        }
    }

    /// Waits for the thread, kicking it while it is still in the guest.
    pub fn join(self) -> Result<(), VcpuThreadPanicked> {
        while !self.thread.is_finished() {
            self.kick();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.thread
            .join()
            .map(drop)
            .map_err(|_| VcpuThreadPanicked(self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rvmm_devices::BusDevice;

    struct Port(u8);
    impl BusDevice for Port {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn buses() -> (Bus, Bus) {
        let mut io = Bus::new();
        io.insert(Arc::new(Mutex::new(Port(7))), 0x80, 1).unwrap();
        (io, Bus::new())
    }

    #[test]
    fn port_io_goes_to_the_bus() {
        let (io, mmio) = buses();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x80, &[9]), &io, &mmio),
            ExitAction::Continue
        );
        let mut data = [0u8];
        handle_exit(VcpuExit::IoIn(0x80, &mut data), &io, &mmio);
        assert_eq!(data, [9]);
    }

    #[test]
    fn unknown_addresses_read_all_ones_and_never_stop() {
        let (io, mmio) = buses();
        let mut data = [0u8; 4];
        assert_eq!(
            handle_exit(VcpuExit::IoIn(0x1234, &mut data), &io, &mmio),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff; 4]);
        let mut data = [0u8; 8];
        assert_eq!(
            handle_exit(VcpuExit::MmioRead(0xdead_0000, &mut data), &io, &mmio),
            ExitAction::Continue
        );
        assert_eq!(data, [0xff; 8]);
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(0xdead_0000, &[1]), &io, &mmio),
            ExitAction::Continue
        );
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x1234, &[1]), &io, &mmio),
            ExitAction::Continue
        );
    }

    #[test]
    fn resets_and_failures_stop_the_vm() {
        let (io, mmio) = buses();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &io, &mmio),
            ExitAction::Stop(StopReason::Reset)
        );
        assert_eq!(
            handle_exit(
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]),
                &io,
                &mmio
            ),
            ExitAction::Stop(StopReason::Shutdown)
        );
        assert_eq!(
            handle_exit(VcpuExit::FailEntry(0x21, 0), &io, &mmio),
            ExitAction::Fail(VcpuError::EntryFailed(0x21))
        );
        assert_eq!(
            handle_exit(VcpuExit::InternalError, &io, &mmio),
            ExitAction::InternalError
        );
    }

    #[test]
    fn first_stop_reason_wins() {
        let stop = VmStop::new().unwrap();
        assert!(!stop.is_stopping());
        stop.request(StopReason::Reset);
        stop.request(StopReason::Error(StopError::EventLoop("later".into())));
        assert!(stop.is_stopping());
        assert_eq!(stop.reason(), Some(StopReason::Reset));
        assert_eq!(stop.eventfd().read().unwrap(), 2);
    }

    #[test]
    fn exit_codes() {
        assert_eq!(StopReason::Reset.exit_code(), 0);
        assert_eq!(StopReason::Shutdown.exit_code(), 0);
        assert_eq!(StopReason::Signal(libc::SIGINT).exit_code(), 130);
        assert_eq!(StopReason::Signal(libc::SIGTERM).exit_code(), 143);
        assert_eq!(
            StopReason::Error(StopError::Sandbox("x".into())).exit_code(),
            1
        );
    }

    #[test]
    fn a_panic_on_a_vcpu_thread_stops_the_vm_with_its_message() {
        let stop = Arc::new(VmStop::new().unwrap());
        let on_thread = stop.clone();
        std::thread::spawn(move || {
            stop_on_panic(3, &on_thread, || panic!("device model bug"));
        })
        .join()
        .expect("the panic is caught, the thread ends normally");
        assert!(stop.is_stopping());
        assert_eq!(
            stop.reason(),
            Some(StopReason::Error(StopError::Vcpu {
                vcpu: 3,
                cause: VcpuError::Panicked("device model bug".into()),
                rip: None,
            }))
        );
        assert_eq!(stop.eventfd().read().unwrap(), 1, "the event loop is woken");
    }

    #[test]
    fn the_kick_handler_sets_only_its_own_threads_immediate_exit() {
        install_kick_handler().unwrap();
        let mine = Box::leak(Box::new(0u8)) as *mut u8 as usize;
        let other = Box::leak(Box::new(0u8)) as *mut u8 as usize;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            IMMEDIATE_EXIT.with(|p| p.set(mine as *mut u8));
            ready_tx.send(()).unwrap();
            done_rx.recv().unwrap();
            IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
        });
        ready_rx.recv().unwrap();
        // SAFETY: the thread is alive (it waits on `done_rx`).
        unsafe { libc::pthread_kill(thread.as_pthread_t(), kick_signal()) };
        // SAFETY: both bytes are leaked, so live for ever.
        let read = |p: usize| unsafe { std::ptr::read_volatile(p as *const u8) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while read(mine) == 0 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        done_tx.send(()).unwrap();
        thread.join().unwrap();
        assert_eq!(read(mine), 1, "the kicked thread's vCPU must leave KVM_RUN");
        assert_eq!(read(other), 0, "no other vCPU's kvm_run is touched");
    }
}
