//! Guest console output on its way to the host's stdout. The UART is written
//! on vCPU threads, which must never wait on the host: if stdout stalls (a
//! pipe nobody reads, a suspended terminal), a blocked vCPU could not be
//! stopped. So the UART appends to a bounded buffer and returns at once, and
//! a writer thread of its own (`rvmm-console`) moves the bytes to stdout;
//! only that thread blocks when stdout does. Past the buffer's size, output
//! is dropped and counted, and rvmm says so once.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::seccomp::{self, SeccompError};

/// Guest output held while stdout is slower than the guest.
const CAPACITY: usize = 1 << 20;
/// Most bytes handed to one write(2).
const CHUNK: usize = 64 << 10;
/// How long a stopping VM waits for its last output to reach stdout.
pub const DRAIN_ON_STOP: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ConsoleOutputError {
    #[error("could not start the console output thread: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("the console output thread ended before it was ready")]
    NotReady,
}

#[derive(Default)]
struct Pending {
    bytes: VecDeque<u8>,
    dropped: u64,
    /// The writer holds bytes it has taken but not yet written.
    writing: bool,
    closing: bool,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        crate::sync::lock(&self.pending)
    }
}

/// The UART's output stream: appends and never blocks.
pub struct OutputSink(Arc<Shared>);

impl Write for OutputSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.0.lock();
        let room = CAPACITY.saturating_sub(pending.bytes.len());
        let taken = room.min(data.len());
        pending.bytes.extend(&data[..taken]);
        if taken < data.len() {
            if pending.dropped == 0 {
                log::warn!("stdout is not keeping up with the guest console; dropping console output until it does");
            }
            pending.dropped += (data.len() - taken) as u64;
        }
        drop(pending);
        self.0.changed.notify_all();
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread, to be finished when the VM stops.
pub struct OutputWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread on `out`, under its own seccomp filter (when
/// `sandbox`) before it returns, so the filter is on before any guest code
/// runs.
pub fn start(
    mut out: Box<dyn Write + Send>,
    sandbox: bool,
) -> Result<(OutputSink, OutputWriter), ConsoleOutputError> {
    let shared = Arc::new(Shared::default());
    let (ready_tx, ready_rx) = mpsc::channel();
    let writer_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("rvmm-console".into())
        .spawn(move || {
            if sandbox {
                if let Err(e) = seccomp::apply(seccomp::ThreadKind::ConsoleOutput) {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            write_until_closed(&writer_shared, out.as_mut());
        })
        .map_err(ConsoleOutputError::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((
            OutputSink(shared.clone()),
            OutputWriter {
                shared,
                thread: Some(thread),
            },
        )),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(ConsoleOutputError::NotReady),
    }
}

fn write_until_closed(shared: &Shared, out: &mut dyn Write) {
    let mut failed = false;
    loop {
        let mut pending = shared.lock();
        while pending.bytes.is_empty() && !pending.closing {
            pending = shared
                .changed
                .wait(pending)
                .unwrap_or_else(|p| p.into_inner());
        }
        if pending.bytes.is_empty() {
            return;
        }
        let n = pending.bytes.len().min(CHUNK);
        let chunk: Vec<u8> = pending.bytes.drain(..n).collect();
        pending.writing = true;
        drop(pending);
        // A closed stdout (EPIPE) ends the output, not the VM.
        if !failed {
            if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
                log::warn!("cannot write the guest console to stdout ({e}); its output is discarded from now on");
                failed = true;
            }
        }
        shared.lock().writing = false;
        shared.changed.notify_all();
    }
}

impl Drop for OutputWriter {
    /// On every way out, [`OutputWriter::finish`] or an early error: the
    /// thread ends once the buffer is empty.
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
    }
}

impl OutputWriter {
    /// Lets the output drain for at most [`DRAIN_ON_STOP`], then leaves the
    /// thread behind if stdout is stalled (process exit ends it).
    pub fn finish(mut self) {
        let mut pending = self.shared.lock();
        pending.closing = true;
        self.shared.changed.notify_all();
        let (pending, timeout) = self
            .shared
            .changed
            .wait_timeout_while(pending, DRAIN_ON_STOP, |p| !p.bytes.is_empty() || p.writing)
            .unwrap_or_else(|p| p.into_inner());
        let (left, dropped) = (pending.bytes.len(), pending.dropped);
        drop(pending);
        if dropped > 0 {
            log::warn!("{dropped} bytes of guest console output were dropped because stdout did not keep up");
        }
        if timeout.timed_out() {
            log::warn!("stdout is stalled: {left} bytes of guest console output were not written");
        } else if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A stdout that records what it got, or blocks for ever.
    struct Recorder(Arc<Mutex<Vec<u8>>>, bool);

    impl Write for Recorder {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            if self.1 {
                std::thread::sleep(Duration::from_secs(3600));
            }
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn everything_written_reaches_stdout_in_order() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (mut sink, writer) = start(Box::new(Recorder(got.clone(), false)), false).unwrap();
        let expected: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for piece in expected.chunks(777) {
            sink.write_all(piece).unwrap();
        }
        writer.finish();
        assert!(*got.lock().unwrap() == expected);
    }

    #[test]
    fn a_stalled_stdout_neither_blocks_the_writer_nor_the_stop() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (mut sink, writer) = start(Box::new(Recorder(got, true)), false).unwrap();
        let started = Instant::now();
        for _ in 0..3 * CAPACITY / 4096 {
            sink.write_all(&[b'x'; 4096]).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(2), "writes blocked");
        let stopping = Instant::now();
        writer.finish();
        assert!(stopping.elapsed() < DRAIN_ON_STOP + Duration::from_secs(1));
    }
}
