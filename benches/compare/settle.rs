//! The pause before every timed run. A VM's teardown in the host kernel
//! goes on after its VMM is reaped, and a Docker container's removal goes
//! on in `dockerd` after `docker run --rm` has returned; a run started
//! meanwhile shares the host with it, and whichever system runs next pays.
//! Back to back, half of rvmm's hello-guest runs took about 24 ms to exit
//! instead of about 9 (10 runs each way; 1 in 10 with a 50 ms pause), and
//! a restore started 50 ms after a Docker run loaded in 10-13 ms instead
//! of 5. So each run waits SETTLE, then until the host's CPUs have been
//! idle for a window (at most QUIET_LIMIT; the report counts the runs that
//! started without it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const SETTLE: Duration = Duration::from_millis(50);
/// The window over which the host must be idle.
/// (/proc/stat counts in 10 ms ticks: five per CPU.)
pub const QUIET_WINDOW: Duration = Duration::from_millis(50);
/// Idle: at least this share of all CPUs' time in the window.
pub const QUIET_SHARE: f64 = 0.9;
/// The longest wait for quiet after SETTLE.
pub const QUIET_LIMIT: Duration = Duration::from_secs(2);

static STARTS: AtomicUsize = AtomicUsize::new(0);
static NOT_QUIET: AtomicUsize = AtomicUsize::new(0);

/// (idle, total) CPU time of all CPUs so far, in clock ticks.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let idle = fields.get(3)? + fields.get(4)?;
    Some((idle, fields.iter().take(8).sum()))
}

/// Waits SETTLE, then for the host to be idle (see the module comment).
pub fn settle() {
    std::thread::sleep(SETTLE);
    STARTS.fetch_add(1, Ordering::Relaxed);
    let deadline = Instant::now() + QUIET_LIMIT;
    loop {
        let Some((idle0, total0)) = cpu_ticks() else {
            return;
        };
        std::thread::sleep(QUIET_WINDOW);
        let Some((idle1, total1)) = cpu_ticks() else {
            return;
        };
        let total = total1.saturating_sub(total0);
        if total > 0 && (idle1 - idle0) as f64 >= QUIET_SHARE * total as f64 {
            return;
        }
        if Instant::now() >= deadline {
            NOT_QUIET.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// How the runs were spaced, for the report's header.
pub fn method() -> String {
    format!(
        "each run {} ms after the previous one ended and then once the host's CPUs had been at least {:.0}% idle for {} ms (waited for at most {} s; {} of {} runs started without that)",
        SETTLE.as_millis(),
        QUIET_SHARE * 100.0,
        QUIET_WINDOW.as_millis(),
        QUIET_LIMIT.as_secs(),
        NOT_QUIET.load(Ordering::Relaxed),
        STARTS.load(Ordering::Relaxed)
    )
}
