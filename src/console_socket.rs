//! `--serial socket=PATH`: the guest console on a Unix stream socket. One
//! client at a time reads the console's output (what came before it
//! connected too, up to the output buffer) and types its input; a second
//! client is turned away while the first is connected; when a client
//! leaves, the next may connect.
//!
//! The socket is bound by `unix_listener::listen`, before the VM is built.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::console::ConsoleInput;
use crate::console_output::OutputTarget;

/// O_NONBLOCK through fcntl: std's `set_nonblocking` is an ioctl (FIONBIO),
/// which the event loop's seccomp filter does not allow.
fn set_nonblocking(stream: &UnixStream) -> std::io::Result<()> {
    let fd = stream.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor `stream` owns.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) >= 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether the peer of `stream` (non-blocking) has closed its end.
fn has_hung_up(stream: &UnixStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: peeks at most one byte into `byte`, which outlives the call.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

/// Serves the console socket on the event loop.
pub struct SocketConsole {
    listener: UnixListener,
    client: Option<UnixStream>,
    input: ConsoleInput,
    output: OutputTarget,
}

impl SocketConsole {
    /// `input` must be without a source (`ConsoleInput::without_source`).
    pub fn new(listener: UnixListener, input: ConsoleInput, output: OutputTarget) -> Self {
        Self {
            listener,
            client: None,
            input,
            output,
        }
    }

    fn accept(&mut self, ops: &mut EventOps) {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                if e.kind() != ErrorKind::WouldBlock {
                    log::warn!("serial socket: cannot accept a client: {e}");
                }
                return;
            }
        };
        // The current client may have left in the same round of events,
        // its end not yet seen: look before turning the new one away.
        if self.client.as_ref().is_some_and(has_hung_up) {
            self.drop_client(ops);
        }
        if self.client.is_some() {
            log::info!("serial socket: turned a second client away");
            return;
        }
        let output = set_nonblocking(&stream)
            .and_then(|()| stream.try_clone())
            .map(OwnedFd::from);
        match output {
            Ok(output) => {
                log::info!("serial socket: a client connected");
                self.output.attach(output);
                self.input.set_source(Some(stream.as_raw_fd()), ops);
                self.client = Some(stream);
            }
            Err(e) => log::warn!("serial socket: cannot set up a client: {e}"),
        }
    }

    fn drop_client(&mut self, ops: &mut EventOps) {
        self.input.set_source(None, ops);
        self.output.detach();
        self.client = None;
        log::info!("serial socket: the client left");
    }
}

impl MutEventSubscriber for SocketConsole {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            log::error!("cannot watch the serial socket: {e:?}");
        }
        self.input.init(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.listener.as_raw_fd() {
            self.accept(ops);
            return;
        }
        self.input.process(events, ops);
        if self.client.is_some() && self.input.source_closed() {
            self.drop_client(ops);
        }
    }
}
