//! vCPU threads: the KVM_RUN loop, the handling of each exit, and stopping a
//! running vCPU from another thread.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::{VcpuExit, VcpuFd};
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
    /// A vCPU could not go on.
    Error(String),
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
        let mut current = rvmm_devices::bus::lock(&self.reason);
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
        rvmm_devices::bus::lock(&self.reason).clone()
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum ExitAction {
    Continue,
    Stop(StopReason),
    /// KVM_EXIT_INTERNAL_ERROR: the details are in the vCPU's kvm_run.
    InternalError,
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

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
                KVM_SYSTEM_EVENT_CRASH => StopReason::Error("the guest reported a crash".into()),
                other => StopReason::Error(format!("unknown KVM system event {other}")),
            });
        }
        VcpuExit::Hlt => return ExitAction::Stop(StopReason::Shutdown),
        VcpuExit::FailEntry(reason, _) => {
            return ExitAction::Stop(StopReason::Error(format!(
                "KVM could not enter the guest (hardware entry failure reason {reason:#x})"
            )));
        }
        VcpuExit::InternalError => return ExitAction::InternalError,
        other => {
            return ExitAction::Stop(StopReason::Error(format!("unexpected KVM exit {other:?}")));
        }
    }
    ExitAction::Continue
}

/// Names of KVM_INTERNAL_ERROR sub-errors, for messages.
fn internal_error_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure: the host could not emulate a guest instruction",
        2 => "simultaneous exception",
        3 => "delivery event failed",
        4 => "unexpected exit reason",
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
        *rvmm_devices::bus::lock(&self.open) = true;
        self.opened.notify_all();
    }

    fn wait(&self) {
        let mut open = rvmm_devices::bus::lock(&self.open);
        while !*open {
            open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
        }
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

/// Installs the (empty) handler for [`kick_signal`]: its only job is to make
/// KVM_RUN return EINTR. Called once, before any vCPU thread starts.
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
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

    /// Runs the guest until this vCPU or another one stops the VM.
    fn run(&mut self, stop: &VmStop) {
        while !stop.is_stopping() {
            let action = match self.fd.run() {
                Ok(exit) => handle_exit(exit, &self.io_bus, &self.mmio_bus),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    ExitAction::Continue
                }
                Err(e) => ExitAction::Stop(StopReason::Error(format!("KVM_RUN failed: {e}"))),
            };
            let reason = match action {
                ExitAction::Continue => continue,
                ExitAction::Stop(reason) => reason,
                ExitAction::InternalError => {
                    // SAFETY: the exit was KVM_EXIT_INTERNAL_ERROR, so `internal`
                    // is the member of the exit union that KVM filled in.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    StopReason::Error(format!(
                        "KVM internal error ({})",
                        internal_error_name(suberror)
                    ))
                }
            };
            stop.request(self.describe(reason));
            return;
        }
    }

    /// Adds where the guest was to an error, so a person can look it up.
    fn describe(&mut self, reason: StopReason) -> StopReason {
        let StopReason::Error(message) = reason else {
            return reason;
        };
        match self.fd.get_regs() {
            Ok(regs) => StopReason::Error(format!(
                "vCPU {} stopped: {message} at guest RIP {:#x}",
                self.id, regs.rip
            )),
            Err(_) => StopReason::Error(format!("vCPU {} stopped: {message}", self.id)),
        }
    }

    /// Starts the vCPU on a thread named `rvmm-vcpu-N`. The thread installs
    /// its seccomp filter (when `sandbox`), then waits for `gate` to open.
    pub fn start(
        mut self,
        stop: Arc<VmStop>,
        gate: Arc<StartGate>,
        sandbox: bool,
    ) -> std::io::Result<VcpuHandle> {
        let immediate_exit = &mut self.fd.get_kvm_run().immediate_exit as *mut u8 as usize;
        let id = self.id;
        let thread = std::thread::Builder::new()
            .name(format!("rvmm-vcpu-{id}"))
            .spawn(move || {
                if sandbox {
                    if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                        stop.request(StopReason::Error(e.to_string()));
                    }
                }
                gate.wait();
                self.run(&stop);
                // Handing the vCPU back keeps its kvm_run mapping alive until
                // the VMM has joined this thread (see VcpuHandle::kick).
                self
            })?;
        Ok(VcpuHandle {
            id,
            thread,
            immediate_exit,
        })
    }
}

/// A running vCPU thread.
pub struct VcpuHandle {
    pub id: u8,
    thread: JoinHandle<Vcpu>,
    /// Address of the `immediate_exit` byte in the vCPU's kvm_run mapping.
    immediate_exit: usize,
}

impl VcpuHandle {
    /// Makes the vCPU leave KVM_RUN now, or not enter it again.
    pub fn kick(&self) {
        // SAFETY: the kvm_run mapping belongs to the Vcpu, which the thread
        // returns instead of dropping, so it is mapped until `join`; KVM reads
        // `immediate_exit` at each entry and a byte store is atomic on x86.
        unsafe { std::ptr::write_volatile(self.immediate_exit as *mut u8, 1) };
        if !self.thread.is_finished() {
            // SAFETY: the pthread_t is valid until the thread is joined, which
            // needs `self`; the signal only interrupts KVM_RUN.
            unsafe { libc::pthread_kill(self.thread.as_pthread_t(), kick_signal()) };
        }
    }

    /// Waits for the thread, kicking it while it is still in the guest.
    pub fn join(self) -> Result<(), String> {
        while !self.thread.is_finished() {
            self.kick();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.thread
            .join()
            .map(drop)
            .map_err(|_| format!("vCPU {} thread panicked", self.id))
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
        assert!(matches!(
            handle_exit(VcpuExit::FailEntry(0x21, 0), &io, &mmio),
            ExitAction::Stop(StopReason::Error(m)) if m.contains("0x21")
        ));
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
        stop.request(StopReason::Error("later".into()));
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
        assert_eq!(StopReason::Error("x".into()).exit_code(), 1);
    }
}
