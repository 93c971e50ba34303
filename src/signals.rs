//! Host signals that stop the VM (SIGINT, SIGTERM): the handler only records
//! the signal and wakes the event loop through an eventfd.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;

static WAKE_FD: AtomicI32 = AtomicI32::new(-1);
static LAST_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop_signal(signal: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST_SIGNAL.store(signal, Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// While alive, SIGINT and SIGTERM wake the event loop through its eventfd.
pub struct StopSignals {
    pub evt: EventFd,
}

impl StopSignals {
    pub fn install() -> std::io::Result<Self> {
        let evt = EventFd::new(libc::EFD_NONBLOCK)?;
        LAST_SIGNAL.store(0, Ordering::SeqCst);
        WAKE_FD.store(evt.as_raw_fd(), Ordering::SeqCst);
        for signal in [libc::SIGINT, libc::SIGTERM] {
            vmm_sys_util::signal::register_signal_handler(signal, on_stop_signal)
                .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        }
        Ok(Self { evt })
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        // The eventfd closes now; the handler must not write to a reused fd.
        WAKE_FD.store(-1, Ordering::SeqCst);
    }
}

/// The signal that woke the event loop, if any.
pub fn last_signal() -> Option<i32> {
    match LAST_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
