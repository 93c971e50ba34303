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
    cmd: std::process::Command,
    marker: &str,
    limit: Duration,
) -> Option<Started> {
    spawn_until(cmd, marker, limit, Stdio::null())
}

/// As [`start_until`], with the process's stderr going to `stderr`.
pub fn start_until_logged(
    cmd: std::process::Command,
    marker: &str,
    stderr: Stdio,
) -> Option<Started> {
    spawn_until(cmd, marker, RUN_LIMIT, stderr)
}

fn spawn_until(
    mut cmd: std::process::Command,
    marker: &str,
    limit: Duration,
    stderr: Stdio,
) -> Option<Started> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
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

/// Memory of a process outside guest RAM, in KiB, three ways: resident
/// (RSS: every page it maps, shared ones in full), proportional (PSS: a
/// page shared by N processes counts 1/N) and private (USS: pages no other
/// process maps, what starting one more costs).
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryKib {
    pub rss: f64,
    pub pss: f64,
    pub uss: f64,
}

impl std::ops::Add for MemoryKib {
    type Output = MemoryKib;
    fn add(self, other: MemoryKib) -> MemoryKib {
        MemoryKib {
            rss: self.rss + other.rss,
            pss: self.pss + other.pss,
            uss: self.uss + other.uss,
        }
    }
}

impl MemoryKib {
    /// What `self` has more than `before`, each figure at least 0.
    pub fn saturating_sub(self, before: MemoryKib) -> MemoryKib {
        MemoryKib {
            rss: (self.rss - before.rss).max(0.0),
            pss: (self.pss - before.pss).max(0.0),
            uss: (self.uss - before.uss).max(0.0),
        }
    }
}

/// One mapping of /proc/PID/smaps.
#[derive(Default)]
struct Mapping {
    start: u64,
    end: u64,
    anonymous: bool,
    kib: MemoryKib,
}

/// The memory of `pid` that is not guest RAM (Firecracker's method, for
/// RSS, PSS and USS): every mapping's, except guest RAM's. Guest RAM lies
/// in the largest run of adjacent anonymous mappings at least as big as
/// guest memory (rvmm gives the first 2 MiB of guest RAM a mapping of its
/// own), and is the part of that run whose mappings add up to exactly the
/// guest's size: a vCPU thread's stack or a cached thread stack may sit
/// right beside it (both rvmm's and Firecracker's do), and is the VMM's.
/// Where no part adds up (QEMU), the whole run counts as guest RAM.
pub fn overhead(pid: u32, guest_bytes: u64) -> Option<MemoryKib> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut mappings: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = fields.first() else {
            continue;
        };
        if first.contains('-') && first.chars().next().unwrap().is_ascii_hexdigit() {
            let (a, b) = first.split_once('-')?;
            mappings.push(Mapping {
                start: u64::from_str_radix(a, 16).ok()?,
                end: u64::from_str_radix(b, 16).ok()?,
                anonymous: fields.len() < 6,
                kib: MemoryKib::default(),
            });
            continue;
        }
        let value = || -> Option<f64> { fields.get(1)?.parse().ok() };
        let Some(last) = mappings.last_mut() else {
            continue;
        };
        match *first {
            "Rss:" => last.kib.rss = value()?,
            "Pss:" => last.kib.pss = value()?,
            "Private_Clean:" | "Private_Dirty:" => last.kib.uss += value()?,
            _ => {}
        }
    }
    // Runs of adjacent anonymous mappings: (first index, last index, size).
    let mut runs: Vec<(usize, usize, u64)> = Vec::new();
    for (i, m) in mappings.iter().enumerate() {
        match runs.last_mut() {
            Some(run)
                if m.anonymous && mappings[run.1].anonymous && mappings[run.1].end == m.start =>
            {
                run.1 = i;
                run.2 += m.end - m.start;
            }
            _ => runs.push((i, i, m.end - m.start)),
        }
    }
    let guest = runs
        .iter()
        .filter(|r| mappings[r.0].anonymous && r.2 >= guest_bytes)
        .max_by_key(|r| r.2)
        .map(|r| exactly_guest(&mappings, r.0, r.1, guest_bytes).unwrap_or(r.0..=r.1));
    Some(
        mappings
            .iter()
            .enumerate()
            .filter(|(i, _)| !guest.as_ref().is_some_and(|g| g.contains(i)))
            .fold(MemoryKib::default(), |sum, (_, m)| sum + m.kib),
    )
}

/// Within `first..=last`, the adjacent mappings that add up to exactly
/// `guest_bytes` and hold the largest of them, if there are such.
fn exactly_guest(
    mappings: &[Mapping],
    first: usize,
    last: usize,
    guest_bytes: u64,
) -> Option<std::ops::RangeInclusive<usize>> {
    let len = |i: usize| mappings[i].end - mappings[i].start;
    let largest = (first..=last).max_by_key(|&i| len(i))?;
    (first..=largest).find_map(|start| {
        let mut sum = 0;
        (start..=last).find_map(|end| {
            sum += len(end);
            (end >= largest && sum == guest_bytes).then_some(start..=end)
        })
    })
}

/// A runc container's memory, in KiB: its cgroup's usage (every process in
/// it, and the page cache charged to it), plus the `runc run` process that
/// stays beside it for its life (as a VMM process does beside its guest).
pub fn container_memory(runc_pid: u32) -> Option<MemoryKib> {
    let init = children(runc_pid).into_iter().next()?;
    Some(cgroup_memory(init)? + overhead(runc_pid, u64::MAX)?)
}

/// The memory charged to the cgroup that `pid` is in, in KiB (one figure:
/// a cgroup counts every page once, so RSS, PSS and USS are all of it).
pub fn cgroup_memory(pid: u32) -> Option<MemoryKib> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    // cgroup v1 ("N:memory:/path") or v2 ("0::/path").
    let usage = cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = match controllers {
            "memory" => format!("/sys/fs/cgroup/memory{path}/memory.usage_in_bytes"),
            "" => format!("/sys/fs/cgroup{path}/memory.current"),
            _ => return None,
        };
        std::fs::read_to_string(file)
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
    })? / 1024.0;
    Some(MemoryKib {
        rss: usage,
        pss: usage,
        uss: usage,
    })
}

/// The child processes of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

pub fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The whole of `pid`'s proportional set size (smaps_rollup), in KiB.
pub fn pss_kib(pid: u32) -> Option<f64> {
    crate::common::proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss").map(|k| k as f64)
}

pub fn rss_kib(pid: u32) -> f64 {
    crate::common::proc_kib(&format!("/proc/{pid}/status"), "VmRSS").unwrap_or(0) as f64
}

pub fn mem_available_kib() -> f64 {
    crate::common::proc_kib("/proc/meminfo", "MemAvailable").unwrap_or(0) as f64
}
