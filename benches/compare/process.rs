//! Starting and watching the processes under test: spawning until a marker
//! appears on stdout, timing, and reading their memory from /proc.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::ms;

/// A started process whose stdout has shown a marker.
pub struct Started {
    pub child: Child,
    pub stdout: std::process::ChildStdout,
    /// Everything read so far.
    pub seen: Vec<u8>,
    /// From spawn to the marker.
    pub elapsed: Duration,
}

/// Spawns `cmd` and reads its stdout until `marker` appears; kills it and
/// returns None if it never does.
pub fn start_until(mut cmd: std::process::Command, marker: &str) -> Option<Started> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let stdout = child.stdout.take().unwrap();
    let mut started = Started {
        child,
        stdout,
        seen: Vec::new(),
        elapsed: Duration::ZERO,
    };
    if !started.read_until(marker) {
        stop(started.child);
        return None;
    }
    started.elapsed = start.elapsed();
    Some(started)
}

impl Started {
    /// Reads stdout until `marker` has appeared; false if it ends first.
    pub fn read_until(&mut self, marker: &str) -> bool {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&self.seen).contains(marker) {
            match self.stdout.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
            }
        }
        true
    }
}

/// Spawns `cmd` and returns (time to the first stdout line containing
/// `marker`, time to exit), or None if the marker never came.
pub fn time_run(cmd: std::process::Command, marker: &str) -> Option<(f64, f64)> {
    time_run_output(cmd, marker).map(|(first, exit, _)| (first, exit))
}

/// As [`time_run`], also returning everything the guest printed.
pub fn time_run_output(cmd: std::process::Command, marker: &str) -> Option<(f64, f64, String)> {
    let start = Instant::now();
    let mut started = start_until(cmd, marker)?;
    let _ = started.stdout.read_to_end(&mut started.seen);
    let _ = started.child.wait();
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
