//! How a running VM comes to a stop: a guest reset or power-off, a host
//! signal, or a vCPU that stopped. SIGTERM first asks the guest to shut down
//! in order (Ctrl-Alt-Del) and stops it hard only after a bounded time. The
//! API's requests to a running VM (Ctrl-Alt-Del, pause, resume) are served
//! here too.

use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use rvmm_devices::i8042::I8042;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::signals::{self, StopSignals};
use crate::vcpu::{Pause, StopReason, VmStop};

/// How long a pause waits for every vCPU to leave the guest.
const PAUSE_LIMIT: Duration = Duration::from_secs(2);

/// What the API asks of a running VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmAction {
    CtrlAltDel,
    Pause,
    Resume,
    /// The paused VM's state, and its memory for the API to write out.
    Snapshot,
}

/// What a request gave back.
pub enum VmReply {
    Done,
    Snapshot(
        Box<crate::snapshot::SnapshotState>,
        crate::memory::GuestMemoryMmap,
    ),
}

/// One request, and where its outcome goes.
pub struct VmRequest {
    pub action: VmAction,
    pub reply: mpsc::Sender<Result<VmReply, String>>,
}

/// The running VM's end of the API: `wake` is signalled after each request
/// is sent on the channel.
pub struct VmRequests {
    pub wake: EventFd,
    pub receiver: mpsc::Receiver<VmRequest>,
}

/// Turns the VMM's own wake-ups (host signal, stop timer) into a stop
/// request, and wakes the event loop for a stop a vCPU or a device (the
/// guest's power-off or reset) recorded. SIGTERM first asks the guest to shut down
/// (Ctrl-Alt-Del) and stops it hard only when `stop_timeout` passes, a
/// second signal comes, or no keyboard driver in the guest could hear it.
pub struct VmControl {
    signals: StopSignals,
    stop: Arc<VmStop>,
    i8042: Arc<Mutex<I8042>>,
    stop_timeout: Duration,
    stop_timer: TimerFd,
    shutdown_asked: bool,
    requests: Option<VmRequests>,
    pause: Arc<Pause>,
    vcpus: usize,
    snapshots: Option<crate::snapshot::Source>,
}

impl VmControl {
    /// `i8042` is where Ctrl-Alt-Del is pressed on SIGTERM.
    pub fn new(
        signals: StopSignals,
        stop: Arc<VmStop>,
        i8042: Arc<Mutex<I8042>>,
        stop_timeout: Duration,
    ) -> std::io::Result<Self> {
        let stop_timer =
            TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(Self {
            signals,
            stop,
            i8042,
            stop_timeout,
            stop_timer,
            shutdown_asked: false,
            requests: None,
            pause: Arc::default(),
            vcpus: 0,
            snapshots: None,
        })
    }

    /// Also serves the API's `requests`; `pause` is what the VM's `vcpus`
    /// vCPUs park on; `snapshots` what a snapshot is taken of.
    pub fn serving(
        mut self,
        requests: Option<VmRequests>,
        pause: Arc<Pause>,
        vcpus: usize,
        snapshots: Option<crate::snapshot::Source>,
    ) -> Self {
        self.requests = requests;
        self.pause = pause;
        self.vcpus = vcpus;
        self.snapshots = snapshots;
        self
    }

    /// Carries out the API's requests.
    fn serve_requests(&mut self) {
        let Some(requests) = &self.requests else {
            return;
        };
        let _ = requests.wake.read();
        while let Ok(request) = requests.receiver.try_recv() {
            let outcome = match request.action {
                VmAction::CtrlAltDel => {
                    // As Firecracker's: done, whether or not a driver hears it.
                    if crate::sync::lock(&self.i8042).press_ctrl_alt_del() {
                        log::info!("API: pressed Ctrl-Alt-Del");
                    } else {
                        log::info!(
                            "API: Ctrl-Alt-Del, but the guest has no keyboard driver to hear it"
                        );
                    }
                    Ok(VmReply::Done)
                }
                VmAction::Pause => {
                    if self.pause.pause(self.vcpus, PAUSE_LIMIT) {
                        log::info!("API: the VM is paused");
                        Ok(VmReply::Done)
                    } else {
                        Err(format!(
                            "not every vCPU left the guest within {PAUSE_LIMIT:?}; it is pausing"
                        ))
                    }
                }
                VmAction::Resume => {
                    self.pause.resume();
                    log::info!("API: the VM runs again");
                    Ok(VmReply::Done)
                }
                VmAction::Snapshot => match &self.snapshots {
                    None => Err("this VM cannot be snapshotted".to_string()),
                    Some(source) => source
                        .capture(&self.pause, &self.i8042)
                        .map(|state| VmReply::Snapshot(Box::new(state), source.memory.clone())),
                },
            };
            let _ = request.reply.send(outcome);
        }
    }

    fn on_signal(&mut self, signal: i32) {
        if signal == libc::SIGTERM && !self.shutdown_asked && !self.stop_timeout.is_zero() {
            if crate::sync::lock(&self.i8042).press_ctrl_alt_del() {
                match self.stop_timer.reset(self.stop_timeout, None) {
                    Ok(()) => {
                        self.shutdown_asked = true;
                        log::info!(
                            "SIGTERM: pressed Ctrl-Alt-Del; the guest has {} s to shut down",
                            self.stop_timeout.as_secs_f64()
                        );
                        return;
                    }
                    Err(e) => {
                        log::error!("cannot time the guest's shutdown ({e}); stopping it now")
                    }
                }
            } else {
                log::info!("SIGTERM: the guest has no keyboard driver to hear Ctrl-Alt-Del; stopping it now");
            }
        }
        log::info!("stopping the VM on signal {signal}");
        self.stop.request(StopReason::Signal(signal));
    }
}

impl MutEventSubscriber for VmControl {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [
            self.signals.evt.as_raw_fd(),
            self.stop.eventfd().as_raw_fd(),
            self.stop_timer.as_raw_fd(),
        ]
        .into_iter()
        .chain(self.requests.as_ref().map(|r| r.wake.as_raw_fd()))
        {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch VM control events: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.signals.evt.as_raw_fd() {
            let _ = self.signals.evt.read();
            let signal = signals::last_signal().unwrap_or(libc::SIGTERM);
            self.on_signal(signal);
        } else if self
            .requests
            .as_ref()
            .is_some_and(|r| r.wake.as_raw_fd() == fd)
        {
            self.serve_requests();
        } else if fd == self.stop_timer.as_raw_fd() {
            let _ = self.stop_timer.wait();
            log::warn!(
                "the guest did not shut down within {} s of Ctrl-Alt-Del; stopping it",
                self.stop_timeout.as_secs_f64()
            );
            self.stop.request(StopReason::Signal(libc::SIGTERM));
        } else {
            let _ = self.stop.eventfd().read();
        }
    }
}
