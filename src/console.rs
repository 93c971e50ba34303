//! The host side of the guest console: the terminal mode of stdin, and
//! feeding stdin to the guest's UART as fast as the guest takes it.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, OnceLock};

use event_manager::{EventOps, Events, MutEventSubscriber};
use rvmm_devices::serial::SerialConsole;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::vcpu::{StopReason, VmStop};

/// The terminal settings rvmm found, and the thread that found them (the
/// VMM thread, whose seccomp filter allows terminal ioctls), so every exit
/// path can put them back.
static SAVED_TERMIOS: OnceLock<(libc::termios, std::thread::ThreadId)> = OnceLock::new();

/// Puts the terminal back as rvmm found it, when called on the thread that
/// may (other threads' filters forbid the ioctl: a vCPU thread's panic
/// must not end in SIGSYS; the VMM thread restores the terminal once the
/// VM has stopped). Safe to call more than once and from a panic hook.
pub fn restore_terminal() {
    if let Some((saved, owner)) = SAVED_TERMIOS.get() {
        if std::thread::current().id() != *owner {
            return;
        }
        // SAFETY: `saved` is a termios that tcgetattr filled in for fd 0.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
    }
}

/// Raw mode on stdin while alive, when stdin is a terminal.
pub struct RawTerminal {
    active: bool,
}

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal; does nothing otherwise.
    pub fn enter() -> Self {
        // Not `std::io::stdin()`: that allocates an 8 KiB read buffer that
        // lives as long as the VMM, and rvmm reads fd 0 itself.
        // SAFETY: fd 0 stays open for the whole call (it is only examined).
        let stdin = unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::STDIN_FILENO) };
        if !stdin.is_terminal() {
            return Self { active: false };
        }
        // SAFETY: termios is plain data; tcgetattr fills it in or fails.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `termios` is a valid, writable termios.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut termios) } != 0 {
            return Self { active: false };
        }
        let _ = SAVED_TERMIOS.set((termios, std::thread::current().id()));
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous_hook(info);
        }));
        let mut raw = termios;
        // SAFETY: `raw` is a valid termios; cfmakeraw only edits its flags.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output processing so host-side log lines still start at column 0.
        raw.c_oflag = termios.c_oflag;
        // SAFETY: `raw` is a valid termios for fd 0.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) };
        Self { active: true }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if self.active {
            restore_terminal();
        }
    }
}

/// Ctrl-A, then `x`, quits rvmm from a raw terminal (as in QEMU).
const ESCAPE: u8 = 0x01;
const ESCAPE_QUIT: u8 = b'x';

/// Pumps host stdin (or a serial socket's client) into the guest UART. When
/// the UART's FIFO is full, stops reading until the guest drains it (the
/// UART signals `input_space`).
pub struct ConsoleInput {
    /// Where input comes from: stdin, a socket client, or nothing yet.
    stdin: Option<RawFd>,
    /// The source ended (EOF or an error).
    closed: bool,
    serial: Arc<Mutex<SerialConsole>>,
    input_space: EventFd,
    pending: VecDeque<u8>,
    reading_stdin: bool,
    /// Interactive terminal: honour the Ctrl-A escape.
    terminal: bool,
    escape_seen: bool,
    stop: Arc<VmStop>,
}

impl ConsoleInput {
    pub fn new(
        serial: Arc<Mutex<SerialConsole>>,
        input_space: EventFd,
        terminal: bool,
        stop: Arc<VmStop>,
    ) -> Self {
        Self {
            stdin: Some(libc::STDIN_FILENO),
            closed: false,
            serial,
            input_space,
            pending: VecDeque::new(),
            reading_stdin: false,
            terminal,
            escape_seen: false,
            stop,
        }
    }

    /// Reads from `source` from now on instead (None: no input).
    pub fn set_source(&mut self, source: Option<RawFd>, ops: &mut EventOps) {
        self.stop_reading(ops);
        self.stdin = source;
        self.closed = false;
        self.start_reading(ops);
    }

    /// Without a source: a serial socket before its first client.
    pub fn without_source(mut self) -> Self {
        self.stdin = None;
        self
    }

    /// The source ended: EOF, or an error reading it.
    pub fn source_closed(&self) -> bool {
        self.closed
    }

    /// Takes bytes read from stdin, handling the quit escape on terminals.
    fn accept(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.terminal && self.escape_seen {
                self.escape_seen = false;
                match b {
                    ESCAPE_QUIT => {
                        self.stop.request(StopReason::Shutdown);
                        return;
                    }
                    ESCAPE => {}
                    other => {
                        self.pending.push_back(ESCAPE);
                        self.pending.push_back(other);
                        continue;
                    }
                }
            } else if self.terminal && b == ESCAPE {
                self.escape_seen = true;
                continue;
            }
            self.pending.push_back(b);
        }
    }

    /// Moves pending input into the UART FIFO.
    fn flush_to_guest(&mut self) {
        let mut serial = crate::sync::lock(&self.serial);
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let taken = serial.queue_input(front);
            if taken == 0 {
                break;
            }
            self.pending.drain(..taken);
        }
    }

    fn read_stdin(&mut self, ops: &mut EventOps) {
        let Some(fd) = self.stdin else {
            return;
        };
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            n if n > 0 => {
                self.accept(&buf[..n as usize]);
                self.flush_to_guest();
            }
            0 => {
                log::debug!("stdin closed; the guest console gets no more input");
                self.closed = true;
                self.stop_reading(ops);
            }
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted
                    && err.kind() != std::io::ErrorKind::WouldBlock
                {
                    log::warn!("cannot read stdin ({err}); the guest console gets no more input");
                    self.closed = true;
                    self.stop_reading(ops);
                }
            }
        }
    }

    fn stop_reading(&mut self, ops: &mut EventOps) {
        if let (true, Some(fd)) = (self.reading_stdin, self.stdin) {
            let _ = ops.remove(Events::empty_raw(fd));
        }
        self.reading_stdin = false;
    }

    fn start_reading(&mut self, ops: &mut EventOps) {
        if let (false, Some(fd)) = (self.reading_stdin, self.stdin) {
            match ops.add(Events::new_raw(fd, EventSet::IN)) {
                Ok(()) => self.reading_stdin = true,
                // A regular file or /dev/null cannot be polled: no console input.
                Err(e) => {
                    log::debug!("stdin cannot be polled ({e:?}); the guest console gets no input")
                }
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.input_space, EventSet::IN)) {
            log::warn!("cannot watch the serial input queue: {e:?}");
        }
        self.start_reading(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input_space.as_raw_fd() {
            let _ = self.input_space.read();
            self.flush_to_guest();
            if self.pending.is_empty() {
                self.start_reading(ops);
            }
        } else if Some(events.fd()) == self.stdin {
            if events.event_set().intersects(EventSet::IN) {
                self.read_stdin(ops);
            } else {
                // Hang-up or error without data.
                self.closed = true;
                self.stop_reading(ops);
            }
            if !self.pending.is_empty() {
                // Back-pressure: wait for the guest to drain its FIFO first.
                self.stop_reading(ops);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(terminal: bool) -> (ConsoleInput, Arc<VmStop>) {
        let serial = SerialConsole::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Box::new(std::io::sink()),
        );
        let stop = Arc::new(VmStop::new().unwrap());
        let input = ConsoleInput::new(
            Arc::new(Mutex::new(serial)),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            terminal,
            stop.clone(),
        );
        (input, stop)
    }

    #[test]
    fn ctrl_a_x_quits_on_a_terminal() {
        let (mut c, stop) = console(true);
        c.accept(b"ab\x01x");
        assert_eq!(stop.reason(), Some(StopReason::Shutdown));
        assert_eq!(c.pending.iter().copied().collect::<Vec<_>>(), b"ab");
    }

    #[test]
    fn escape_passes_other_keys_and_doubles() {
        let (mut c, stop) = console(true);
        c.accept(b"\x01\x01\x01q");
        assert_eq!(stop.reason(), None);
        assert_eq!(c.pending.iter().copied().collect::<Vec<_>>(), b"\x01\x01q");
    }

    #[test]
    fn pipes_pass_every_byte() {
        let (mut c, stop) = console(false);
        c.accept(b"\x01x");
        assert_eq!(stop.reason(), None);
        assert_eq!(c.pending.len(), 2);
    }

    #[test]
    fn input_beyond_the_fifo_waits() {
        let (mut c, _) = console(false);
        c.accept(&[b'z'; 200]);
        c.flush_to_guest();
        assert!(!c.pending.is_empty() && c.pending.len() < 200);
    }
}
