//! Density: how many idle 128 MiB instances of each system run at once,
//! how long they take to come up together and what each costs with all of
//! them running. Steps of N go up in turn for every system (A B A B, as
//! the other sections interleave); a system stops at the first N it could
//! not start, or that would need more memory than the host has to spare.

use std::path::Path;
use std::time::Instant;

use crate::instance::{daemon_memory, Idle, Instance};
use crate::ms;
use crate::peers::Peer;
use crate::process::mem_available_kib;
use crate::stats::{Series, Table};

const KIB_PER_GIB: f64 = 1024.0 * 1024.0;
/// The step at which PSS per instance is also reported: the 100 idle VMs
/// the memory target is stated for.
const PSS_STEP: usize = 100;

/// One system's way up the steps.
struct Climb {
    idle: Idle,
    /// The largest N it ran.
    best: usize,
    /// Host memory per instance at `best`, in KiB: the guard's estimate.
    kib_per_instance: f64,
    /// Why it went no higher, once it stopped.
    stopped: Option<String>,
    time: Series,
    host: Series,
    pss: Series,
    /// PSS per instance at PSS_STEP, the reference point.
    pss_at_step: Series,
}

/// What one step of N instances measured.
struct Step {
    elapsed_ms: f64,
    /// Host memory used by all of them, in KiB: MemAvailable's drop, or
    /// their RSS if that is more.
    used_kib: f64,
    /// Their PSS together, the Docker daemon's growth included, in KiB.
    pss_kib: f64,
}

fn largest_steps() -> Vec<usize> {
    let max: usize = std::env::var("RVMM_BENCH_DENSITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    [10, 50, 100, 200, 500, 1000]
        .into_iter()
        .filter(|n| *n <= max)
        .collect()
}

pub fn density(peers: &[Peer], scratch: &Path) -> Vec<Table> {
    let steps = largest_steps();
    // Time and memory are compared at 200 (or the largest step below it),
    // which every system can reach here; the count goes as high as each can.
    let reference = steps.iter().copied().rfind(|&n| n <= 200).unwrap_or(10);
    let mut climbs: Vec<Climb> = peers
        .iter()
        .map(|p| Climb {
            idle: Idle::new(p, scratch),
            best: 0,
            kib_per_instance: 0.0,
            stopped: None,
            time: Series::new(p.name()),
            host: Series::new(p.name()),
            pss: Series::new(p.name()),
            pss_at_step: Series::new(p.name()),
        })
        .collect();
    for &n in &steps {
        for (peer, climb) in peers.iter().zip(&mut climbs) {
            if climb.stopped.is_some() {
                continue;
            }
            let available = mem_available_kib();
            let need = climb.kib_per_instance * n as f64;
            // Stop short of the OOM killer, which would pick its own victims.
            if need > available * 0.8 {
                eprintln!(
                    "density: {} stops at {}: {n} would need about {:.1} GiB, more than 80% of the {:.1} GiB available",
                    peer.name(),
                    climb.best,
                    need / KIB_PER_GIB,
                    available / KIB_PER_GIB
                );
                climb.stopped = Some(format!(
                    "not run (would need {:.1} GiB)",
                    need / KIB_PER_GIB
                ));
                continue;
            }
            crate::settle::settle();
            let Some(step) = run_step(peer, &climb.idle, n, scratch) else {
                eprintln!("density: {} could not start {n} at once", peer.name());
                climb.stopped = Some(format!("not run (could not start {n} at once)"));
                continue;
            };
            climb.best = n;
            climb.kib_per_instance = step.used_kib / n as f64;
            if n == PSS_STEP {
                climb
                    .pss_at_step
                    .samples
                    .push(step.pss_kib / n as f64 / 1024.0);
            }
            if n == reference {
                climb.time.samples.push(step.elapsed_ms);
                climb.host.samples.push(step.used_kib / n as f64 / 1024.0);
                climb.pss.samples.push(step.pss_kib / n as f64 / 1024.0);
            }
        }
    }
    let mut largest = Table::new(
        "density: most idle 128 MiB instances started at once",
        "count",
        true,
    );
    let mut time = Table::new(
        &format!("density: time until all of {reference} are up"),
        "ms",
        false,
    );
    let mut host = Table::new(
        &format!("density: host memory per instance, {reference} running"),
        "MiB",
        false,
    );
    let mut pss = Table::new(
        &format!("density: PSS per instance, {reference} running (guest pages touched included; containers: cgroup + runc, or + shim + Docker daemon's growth)"),
        "MiB",
        false,
    );
    let mut pss_at_step = Table::new(
        &format!("density: PSS per instance, {PSS_STEP} running (as above)"),
        "MiB",
        false,
    );
    let pss_step_ran = steps.contains(&PSS_STEP) && PSS_STEP != reference;
    for (peer, climb) in peers.iter().zip(climbs) {
        let mut count = Series::new(peer.name());
        count.samples.push(climb.best as f64);
        largest.series.push(count);
        for (table, mut series) in [
            (&mut time, climb.time),
            (&mut host, climb.host),
            (&mut pss, climb.pss),
            (&mut pss_at_step, climb.pss_at_step),
        ] {
            series.note = climb.stopped.clone();
            table.series.push(series);
        }
    }
    let mut tables = vec![largest, time, host, pss];
    if pss_step_ran {
        tables.push(pss_at_step);
    }
    tables
}

/// Starts `n` idle instances of `peer` at once, measures them with all of
/// them running, and stops them; None if not all of them came up.
fn run_step(peer: &Peer, idle: &Idle, n: usize, scratch: &Path) -> Option<Step> {
    let available = mem_available_kib();
    let daemon_before = daemon_memory(peer);
    let start = Instant::now();
    let instances: Vec<Option<Instance>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| s.spawn(|| idle.start(peer, 128, scratch)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    let elapsed_ms = ms(start.elapsed());
    let all_up = instances.iter().all(Option::is_some);
    let instances: Vec<Instance> = instances.into_iter().flatten().collect();
    let used = available - mem_available_kib();
    let resident: f64 = instances.iter().map(Instance::resident_kib).sum();
    // PSS with all n running: pages they share are divided among them.
    let pss: f64 = instances.iter().filter_map(Instance::pss_kib).sum();
    let daemon_growth = daemon_memory(peer).saturating_sub(daemon_before);
    Instance::stop_all(instances);
    if let Peer::Container(_) = peer {
        crate::cleanup_containers();
    }
    all_up.then_some(Step {
        elapsed_ms,
        used_kib: used.max(resident),
        pss_kib: pss + daemon_growth.pss,
    })
}
