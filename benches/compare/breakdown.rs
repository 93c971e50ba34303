//! Start-up broken down, for the VM peers whose own logs show its steps:
//! from process start (the bench's clock at spawn) to the VM running
//! (rvmm's "first KVM_RUN" phase line, Firecracker's "Successfully started
//! microvm"), to the guest's write to the boot timer (each VMM's boot-timer
//! line, with the CPU time it reports), to the guest's first output and to
//! exit. Log lines are placed by their own timestamps (microseconds or
//! better, the realtime clock both the bench and the VMMs read).

use std::path::Path;
use std::process::Stdio;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::common::{guest, Entry};
use crate::peers::{vm_command_timed, Peer, VmSpec};
use crate::process::start_until_logged;
use crate::stats::Table;
use crate::{interleave_partial, ms};

const MARKER: &str = "booted: up";

/// One run's steps, in ms from spawn; None where the peer's log has no such line.
struct Steps {
    running: Option<f64>,
    boot_timer: Option<f64>,
    boot_timer_cpu: Option<f64>,
    first_output: f64,
    exit: f64,
}

pub fn breakdown(peers: &[Peer], scratch: &Path) -> Vec<Table> {
    let kernel = guest("booted", Entry::Pvh);
    let vms: Vec<Peer> = peers.iter().filter(|p| p.is_vm()).cloned().collect();
    let mut tables = [
        Table::new(
            "start-up breakdown: process start to the VM running (rvmm: first KVM_RUN; Firecracker: \"Successfully started microvm\"), by their logs",
            "ms",
            false,
        ),
        Table::new(
            "start-up breakdown: process start to the guest's boot-timer write, by the VMM's log",
            "ms",
            false,
        ),
        Table::new(
            "start-up breakdown: VMM CPU time to the guest's boot-timer write, as the VMM reports it",
            "ms",
            false,
        ),
        Table::new(
            "start-up breakdown: process start to first guest output (boot timer on)",
            "ms",
            false,
        ),
        Table::new(
            "start-up breakdown: process start to exit (boot timer on)",
            "ms",
            false,
        ),
    ];
    interleave_partial(
        &vms,
        |peer| {
            let Some(steps) = run_once(peer, &kernel, scratch) else {
                eprintln!("breakdown: a {} run failed; not counted", peer.name());
                return None;
            };
            Some(vec![
                steps.running,
                steps.boot_timer,
                steps.boot_timer_cpu,
                Some(steps.first_output),
                Some(steps.exit),
            ])
        },
        &mut tables,
    );
    let mut tables = tables.to_vec();
    tables.retain(|t| !t.series.is_empty());
    tables
}

fn run_once(peer: &Peer, kernel: &Path, scratch: &Path) -> Option<Steps> {
    // Firecracker 1.16 has its boot timer at 0xc0000000, rvmm at 0xd0000000.
    let cmdline = match peer {
        Peer::Firecracker(_) => "console=ttyS0 booted.at=c",
        _ => "console=ttyS0",
    };
    let spec = VmSpec {
        kernel,
        mem_mib: 128,
        cmdline,
        disks: &[],
        initrd: None,
        net: None,
    };
    let mut cmd = vm_command_timed(peer, &spec, scratch, true);
    cmd.env("RUST_LOG", "rvmm::vmm=debug");
    let log_path = scratch.join("breakdown-stderr.log");
    let log = std::fs::File::create(&log_path).ok()?;
    let spawned = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let start = Instant::now();
    let mut started = start_until_logged(cmd, MARKER, Stdio::from(log))?;
    let first_output = ms(started.elapsed);
    if !started.finish() {
        return None;
    }
    let exit = ms(start.elapsed());
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&started.seen),
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let since_spawn = |needle: &str| {
        let line = text.lines().find(|l| l.contains(needle))?;
        Some((timestamp(line)? - spawned) * 1000.0)
    };
    let (running, timer, cpu) = match peer {
        Peer::Rvmm => (
            since_spawn("phase: first KVM_RUN"),
            since_spawn("boot timer: guest booted"),
            number_before(&text, "boot timer: guest booted", " ms CPU"),
        ),
        Peer::Firecracker(_) => (
            since_spawn("Successfully started microvm"),
            since_spawn("Guest-boot-time"),
            number_before(&text, "Guest-boot-time", " CPU us").map(|us| us / 1000.0),
        ),
        _ => (None, None, None),
    };
    Some(Steps {
        running,
        boot_timer: timer,
        boot_timer_cpu: cpu,
        first_output,
        exit,
    })
}

/// In the line containing `needle`, the number just before `unit`.
fn number_before(text: &str, needle: &str, unit: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(needle))?;
    let before = &line[..line.find(unit)?];
    let start = before
        .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or(0, |i| i + 1);
    before[start..].parse().ok()
}

/// The first `YYYY-MM-DDTHH:MM:SS.fraction` in `line` (UTC, as both VMMs
/// log on these hosts), in seconds since the epoch.
fn timestamp(line: &str) -> Option<f64> {
    let at = line.find(|c: char| c.is_ascii_digit())?;
    let s = &line[at..];
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(rest.len());
    let mut t = rest[..end].split(':');
    let (hour, minute) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let second: f64 = t.next()?.parse().ok()?;
    let days = days_from_civil(year, month, day);
    Some((days * 86400 + hour * 3600 + minute * 60) as f64 + second)
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
