//! Guest console output on its way to the host's stdout. The UART is written
//! on vCPU threads, which must never wait on the host: if stdout stalls (a
//! pipe nobody reads, a suspended terminal), a blocked vCPU could not be
//! stopped. So rvmm writes through a non-blocking descriptor of its own for
//! stdout, and what stdout does not take at once waits in a bounded buffer
//! that the event loop writes out when stdout can take more. Past the
//! buffer's size, output is dropped and counted, and rvmm says so once.
//!
//! For a pipe or a terminal the descriptor is stdout reopened through
//! /proc/self/fd/1, a file description of rvmm's own: O_NONBLOCK on it does
//! not change the shell's terminal or pipe. A regular file never stalls and
//! is written as it is; where reopening cannot be done (stdout is a socket,
//! or /proc is missing), rvmm writes to stdout itself, which may block.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Guest output held while stdout is slower than the guest.
const CAPACITY: usize = 1 << 20;
/// How long a stopping VM waits for its last output to reach stdout.
pub const DRAIN_ON_STOP: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleOutputError {
    #[error("could not set up the console output: {0}")]
    Setup(#[from] std::io::Error),
    #[error("could not open '{path}' for --serial file=: {source}; give a writable path")]
    OpenFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Pending {
    /// Where output goes; none while a serial socket has no client (output
    /// then waits in `bytes`, up to the buffer's size).
    out: Option<OwnedFd>,
    bytes: VecDeque<u8>,
    dropped: u64,
    /// stdout failed for good (EPIPE, say): output is discarded from now on.
    failed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Tells the event loop that bytes are waiting for stdout.
    waiting: EventFd,
}

/// What one non-blocking write did.
enum Wrote {
    Bytes(usize),
    WouldBlock,
    Failed,
}

impl Pending {
    fn write_now(&self, data: &[u8]) -> Wrote {
        let Some(out) = &self.out else {
            return Wrote::WouldBlock;
        };
        // SAFETY: writes from a live slice to a descriptor this struct owns.
        let n = unsafe { libc::write(out.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            return Wrote::Bytes(n as usize);
        }
        let err = std::io::Error::last_os_error();
        match err.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Wrote::WouldBlock,
            _ => {
                log::warn!(
                    "cannot write the guest console ({err}); its output is discarded from now on"
                );
                Wrote::Failed
            }
        }
    }
}

impl Shared {
    /// Writes what is buffered until stdout takes no more; true once empty.
    fn flush_pending(&self) -> bool {
        let mut pending = crate::sync::lock(&self.pending);
        while !pending.bytes.is_empty() && !pending.failed {
            let (front, _) = pending.bytes.as_slices();
            match pending.write_now(front) {
                Wrote::Bytes(n) => drop(pending.bytes.drain(..n)),
                Wrote::WouldBlock => return false,
                Wrote::Failed => pending.failed = true,
            }
        }
        if pending.failed {
            pending.bytes.clear();
        }
        true
    }
}

/// The UART's output stream: writes at once what stdout takes, buffers the
/// rest, and never blocks.
pub struct OutputSink(Arc<Shared>);

impl Write for OutputSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let shared = &self.0;
        let mut pending = crate::sync::lock(&shared.pending);
        if pending.failed {
            return Ok(data.len());
        }
        let mut rest = data;
        // Behind buffered bytes, new ones must wait their turn.
        if pending.bytes.is_empty() && pending.out.is_some() {
            match pending.write_now(data) {
                Wrote::Bytes(n) => rest = &data[n..],
                Wrote::WouldBlock => {}
                Wrote::Failed => {
                    pending.failed = true;
                    return Ok(data.len());
                }
            }
            if rest.is_empty() {
                return Ok(data.len());
            }
            // The event loop writes the rest when stdout can take it.
            let _ = shared.waiting.write(1);
        }
        let taken = CAPACITY.saturating_sub(pending.bytes.len()).min(rest.len());
        pending.bytes.extend(&rest[..taken]);
        if taken < rest.len() {
            if pending.dropped == 0 && pending.out.is_some() {
                log::warn!("stdout is not keeping up with the guest console; dropping console output until it does");
            }
            pending.dropped += (rest.len() - taken) as u64;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The event loop's side: writes buffered output out when stdout is ready.
pub struct OutputPump {
    shared: Arc<Shared>,
    /// The descriptor watched for room, if any.
    watching: Option<RawFd>,
}

/// Switches console output between serial socket clients.
#[derive(Clone)]
pub struct OutputTarget(Arc<Shared>);

impl OutputTarget {
    /// Sends output (and what waited for a client) to `out` from now on.
    pub fn attach(&self, out: OwnedFd) {
        let mut pending = crate::sync::lock(&self.0.pending);
        pending.out = Some(out);
        pending.failed = false;
        let _ = self.0.waiting.write(1);
    }

    /// Keeps output in the buffer until the next client.
    pub fn detach(&self) {
        let mut pending = crate::sync::lock(&self.0.pending);
        pending.out = None;
        pending.failed = false;
    }
}

/// Console output for `--serial socket=`: buffered (up to the buffer's
/// size) until a client comes, then written to it.
pub fn for_clients() -> Result<(OutputSink, OutputPump, OutputTarget), ConsoleOutputError> {
    let (sink, pump) = writing_to(None)?;
    let target = OutputTarget(pump.shared.clone());
    Ok((sink, pump, target))
}

/// Console output into the file at `path` (created, or truncated), as
/// `--serial file=PATH` asks. A regular file never stalls the writer.
pub fn to_file(path: &Path) -> Result<(OutputSink, OutputPump), ConsoleOutputError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| ConsoleOutputError::OpenFile {
            path: path.to_path_buf(),
            source,
        })?;
    writing_to(Some(file.into()))
}

/// Console output that goes nowhere, for `--serial off`.
pub fn discarded() -> Result<(OutputSink, OutputPump), ConsoleOutputError> {
    writing_to(Some(
        OpenOptions::new().write(true).open("/dev/null")?.into(),
    ))
}

/// Opens rvmm's own non-blocking descriptor for stdout when stdout is a
/// pipe or a terminal (the kinds that stall). A regular file keeps the
/// shared descriptor: a description of its own would have its own offset
/// and overwrite what stderr writes to the same file.
pub fn to_stdout() -> Result<(OutputSink, OutputPump), ConsoleOutputError> {
    let stdout = std::io::stdout();
    let kind = std::fs::metadata("/proc/self/fd/1").map(|m| m.file_type());
    let stalls = kind.is_ok_and(|t| t.is_fifo() || t.is_char_device());
    let reopened = stalls
        .then(|| {
            OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open("/proc/self/fd/1")
        })
        .transpose();
    let out: OwnedFd = match reopened {
        Ok(Some(file)) => file.into(),
        Ok(None) => stdout.as_fd().try_clone_to_owned()?,
        Err(e) => {
            log::debug!("cannot reopen stdout ({e}); console output may block if stdout does");
            stdout.as_fd().try_clone_to_owned()?
        }
    };
    writing_to(Some(out))
}

/// The sink and pump for `out`, a descriptor that should be non-blocking.
fn writing_to(out: Option<OwnedFd>) -> Result<(OutputSink, OutputPump), ConsoleOutputError> {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending {
            out,
            bytes: VecDeque::new(),
            dropped: 0,
            failed: false,
        }),
        waiting: EventFd::new(libc::EFD_NONBLOCK)?,
    });
    Ok((
        OutputSink(shared.clone()),
        OutputPump {
            shared,
            watching: None,
        },
    ))
}

impl OutputPump {
    /// At stop: lets the buffer drain for at most [`DRAIN_ON_STOP`], then
    /// says what stdout did not take.
    pub fn finish(&self) {
        if crate::sync::lock(&self.shared.pending).out.is_none() {
            // A serial socket without a client: nobody to wait for.
            return;
        }
        let deadline = Instant::now() + DRAIN_ON_STOP;
        while !self.shared.flush_pending() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let pending = crate::sync::lock(&self.shared.pending);
        if pending.dropped > 0 {
            log::warn!(
                "{} bytes of guest console output were dropped because stdout did not keep up",
                pending.dropped
            );
        }
        if !pending.bytes.is_empty() {
            log::warn!(
                "stdout is stalled: {} bytes of guest console output were not written",
                pending.bytes.len()
            );
        }
    }

    /// Watches the output descriptor for room while output waits for it.
    fn watch_stdout(&mut self, ops: &mut EventOps, on: bool) {
        let current = crate::sync::lock(&self.shared.pending)
            .out
            .as_ref()
            .map(|out| out.as_raw_fd());
        let wanted = current.filter(|_| on);
        if wanted == self.watching {
            return;
        }
        if let Some(fd) = self.watching.take() {
            // Fails harmlessly when the descriptor was a client's, now closed.
            let _ = ops.remove(Events::empty_raw(fd));
        }
        if let Some(fd) = wanted {
            match ops.add(Events::new_raw(fd, EventSet::OUT)) {
                Ok(()) => self.watching = Some(fd),
                // A regular file cannot be polled, but never makes us wait either.
                Err(e) => log::debug!("cannot watch stdout for room ({e:?})"),
            }
        }
    }
}

impl MutEventSubscriber for OutputPump {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.shared.waiting, EventSet::IN)) {
            log::warn!("cannot watch the console output buffer: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.shared.waiting.as_raw_fd() {
            let _ = self.shared.waiting.read();
        }
        let empty = self.shared.flush_pending();
        self.watch_stdout(ops, !empty);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    /// A pipe whose write end is non-blocking and holds one page.
    fn small_pipe() -> (std::fs::File, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills in two new descriptors.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        // SAFETY: both are fresh and owned from here on.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor owned here.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
        let read = std::fs::File::from(read);
        // The test reads blocking.
        // SAFETY: fcntl on a descriptor owned here.
        unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, 0) };
        (read, write)
    }

    #[test]
    fn a_full_stdout_never_blocks_the_writer_and_nothing_is_lost_or_reordered() {
        let (mut reader, write_end) = small_pipe();
        let (mut sink, pump) = writing_to(Some(write_end)).unwrap();
        let expected: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        for piece in expected.chunks(777) {
            sink.write_all(piece).unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the sink blocked"
        );
        assert!(!crate::sync::lock(&pump.shared.pending).bytes.is_empty());
        let reading = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        while !pump.shared.flush_pending() {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(sink);
        drop(pump);
        assert!(reading.join().unwrap() == expected);
    }

    #[test]
    fn a_stalled_stdout_bounds_the_buffer_and_the_stop() {
        let (_unread, write_end) = small_pipe();
        let (mut sink, pump) = writing_to(Some(write_end)).unwrap();
        for _ in 0..2 * CAPACITY / 4096 {
            sink.write_all(&[b'x'; 4096]).unwrap();
        }
        let pending = crate::sync::lock(&pump.shared.pending);
        assert_eq!(pending.bytes.len(), CAPACITY);
        assert!(pending.dropped > 0);
        drop(pending);
        let stopping = Instant::now();
        pump.finish();
        let took = stopping.elapsed();
        assert!(took >= DRAIN_ON_STOP && took < DRAIN_ON_STOP + Duration::from_secs(1));
    }
}
