//! Starting and watching the processes under test: spawning until a marker
//! appears on stdout, timing, and reading their memory from /proc.

use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use crate::ms;

/// How long a run may take to show a marker or to exit, unless told
/// otherwise: every run is bounded, so a VMM that hangs (Firecracker now
/// and then ignores SIGTERM and never exits, see ../shared/peers/README.md)
/// costs its sample, not the bench.
pub const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A started process whose stdout has shown a marker.
pub struct Started {
    pub child: Child,
    /// Its stdout, read by a thread of its own that keeps the pipe open
    /// (a guest never sees its console closed) until the process ends.
    chunks: Receiver<Vec<u8>>,
    /// Everything read so far.
    pub seen: Vec<u8>,
    /// From spawn to the marker.
    pub elapsed: Duration,
}

/// Spawns `cmd` and reads its stdout until `marker` appears; kills it and
/// returns None if it does not within RUN_LIMIT.
pub fn start_until(cmd: std::process::Command, marker: &str) -> Option<Started> {
    start_until_within(cmd, marker, RUN_LIMIT)
}

/// As [`start_until`], within `limit`.
pub fn start_until_within(
    mut cmd: std::process::Command,
    marker: &str,
    limit: Duration,
) -> Option<Started> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take().unwrap();
    let (tx, chunks) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                // Once nobody listens, keep draining: the pipe stays open.
                Ok(n) => drop(tx.send(buf[..n].to_vec())),
            }
        }
    });
    let mut started = Started {
        child,
        chunks,
        seen: Vec::new(),
        elapsed: Duration::ZERO,
    };
    if !started.read_until_within(marker, limit) {
        stop(started.child);
        return None;
    }
    started.elapsed = start.elapsed();
    Some(started)
}

impl Started {
    /// Reads stdout until `marker` has appeared; false if it ends first or
    /// RUN_LIMIT passes.
    pub fn read_until(&mut self, marker: &str) -> bool {
        self.read_until_within(marker, RUN_LIMIT)
    }

    fn read_until_within(&mut self, marker: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !String::from_utf8_lossy(&self.seen).contains(marker) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(_) => return false,
            }
        }
        true
    }

    /// Reads the rest of stdout and waits for the process to exit, both
    /// within RUN_LIMIT; kills it and returns false if it does not exit.
    pub fn finish(&mut self) -> bool {
        let deadline = Instant::now() + RUN_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.chunks.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return false;
                }
            }
        }
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

/// Spawns `cmd` and returns (time to the first stdout line containing
/// `marker`, time to exit), or None if the marker never came or it did
/// not exit within RUN_LIMIT.
pub fn time_run(cmd: std::process::Command, marker: &str) -> Option<(f64, f64)> {
    time_run_output(cmd, marker).map(|(first, exit, _)| (first, exit))
}

/// As [`time_run`], also returning everything the guest printed.
pub fn time_run_output(cmd: std::process::Command, marker: &str) -> Option<(f64, f64, String)> {
    let start = Instant::now();
    let mut started = start_until(cmd, marker)?;
    if !started.finish() {
        eprintln!("bench: a run did not exit within {RUN_LIMIT:?}; killed, not counted");
        return None;
    }
    Some((
        ms(started.elapsed),
        ms(start.elapsed()),
        String::from_utf8_lossy(&started.seen).into_owned(),
    ))
}

/// Resident memory of `pid` that is not guest RAM, in KiB: every mapping's
/// Rss except guest RAM's (Firecracker's method): the largest run of
/// adjacent anonymous mappings at least as big as guest memory (rvmm gives
/// the first 2 MiB of guest RAM a mapping of its own).
pub fn overhead_kib(pid: u32, guest_bytes: u64) -> Option<f64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    // (start, end, rss KiB, anonymous)
    let mut mappings: Vec<(u64, u64, u64, bool)> = Vec::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|f| f.contains('-') && f.chars().next().unwrap().is_ascii_hexdigit())
        {
            let (a, b) = fields[0].split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            mappings.push((a, b, 0, fields.len() < 6));
        } else if fields.first() == Some(&"Rss:") {
            mappings.last_mut()?.2 = fields[1].parse().ok()?;
        }
    }
    // Runs of adjacent anonymous mappings: (first index, last index, size).
    let mut runs: Vec<(usize, usize, u64)> = Vec::new();
    for (i, m) in mappings.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if m.3 && mappings[run.1].3 && mappings[run.1].1 == m.0 => {
                run.1 = i;
                run.2 += m.1 - m.0;
            }
            _ => runs.push((i, i, m.1 - m.0)),
        }
    }
    let guest = runs
        .iter()
        .filter(|r| mappings[r.0].3 && r.2 >= guest_bytes)
        .max_by_key(|r| r.2)
        .map(|r| r.0..=r.1);
    Some(
        mappings
            .iter()
            .enumerate()
            .filter(|(i, _)| !guest.as_ref().is_some_and(|g| g.contains(i)))
            .map(|(_, m)| m.2 as f64)
            .sum(),
    )
}

pub fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn rss_kib(pid: u32) -> f64 {
    crate::common::proc_kib(&format!("/proc/{pid}/status"), "VmRSS").unwrap_or(0) as f64
}

pub fn mem_available_kib() -> f64 {
    crate::common::proc_kib("/proc/meminfo", "MemAvailable").unwrap_or(0) as f64
}
