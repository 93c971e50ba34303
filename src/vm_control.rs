//! How a running VM comes to a stop: a guest reset or power-off, a host
//! signal, or a vCPU that stopped. SIGTERM first asks the guest to shut down
//! in order (Ctrl-Alt-Del) and stops it hard only after a bounded time.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use rvmm_devices::i8042::I8042;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::signals::{self, StopSignals};
use crate::vcpu::{StopReason, VmStop};

/// Turns the VMM's own wake-ups (guest reset or power-off, host signal,
/// vCPU stop) into a stop request. SIGTERM first asks the guest to shut down
/// (Ctrl-Alt-Del) and stops it hard only when `stop_timeout` passes, a
/// second signal comes, or no keyboard driver in the guest could hear it.
pub struct VmControl {
    reset_evt: EventFd,
    power_off_evt: EventFd,
    signals: StopSignals,
    stop: Arc<VmStop>,
    i8042: Arc<Mutex<I8042>>,
    stop_timeout: Duration,
    stop_timer: TimerFd,
    shutdown_asked: bool,
}

impl VmControl {
    /// `reset_evt` and `power_off_evt` are the devices' (i8042, ACPI);
    /// `i8042` is where Ctrl-Alt-Del is pressed on SIGTERM.
    pub fn new(
        reset_evt: EventFd,
        power_off_evt: EventFd,
        signals: StopSignals,
        stop: Arc<VmStop>,
        i8042: Arc<Mutex<I8042>>,
        stop_timeout: Duration,
    ) -> std::io::Result<Self> {
        let stop_timer =
            TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        Ok(Self {
            reset_evt,
            power_off_evt,
            signals,
            stop,
            i8042,
            stop_timeout,
            stop_timer,
            shutdown_asked: false,
        })
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
            self.reset_evt.as_raw_fd(),
            self.power_off_evt.as_raw_fd(),
            self.signals.evt.as_raw_fd(),
            self.stop.eventfd().as_raw_fd(),
            self.stop_timer.as_raw_fd(),
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch VM control events: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.stop.request(StopReason::Reset);
        } else if fd == self.power_off_evt.as_raw_fd() {
            let _ = self.power_off_evt.read();
            self.stop.request(StopReason::Shutdown);
        } else if fd == self.signals.evt.as_raw_fd() {
            let _ = self.signals.evt.read();
            let signal = signals::last_signal().unwrap_or(libc::SIGTERM);
            self.on_signal(signal);
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
