//! The cost of faulting guest memory in: the touch guest writes one byte in
//! every 4 KiB page of 192 MiB, timed from its "start" line to its "done"
//! line, on rvmm with and without --hugepages and on each VM peer (QEMU
//! asks for transparent huge pages for guest RAM by itself).

use std::path::Path;
use std::time::Instant;

use crate::common::{guest, Entry};
use crate::peers::{vm_command, Peer, VmSpec};
use crate::process::{start_until, stop};
use crate::stats::{Series, Table};
use crate::{iterations, ms, WARMUP};

/// Milliseconds between the touch guest's two lines, or None if it failed.
fn touch_ms(cmd: std::process::Command) -> Option<f64> {
    let mut started = start_until(cmd, "touch: start")?;
    let begin = Instant::now();
    let done = started.read_until("touch: done");
    let elapsed = ms(begin.elapsed());
    stop(started.child);
    done.then_some(elapsed)
}

pub fn guest_memory(peers: &[Peer], scratch: &Path) -> Vec<Table> {
    let kernel = guest("touch", Entry::Pvh);
    let spec = VmSpec {
        kernel: &kernel,
        mem_mib: 256,
        cmdline: "console=ttyS0",
        disks: &[],
        initrd: None,
        net: None,
    };
    // (name, peer, extra rvmm arguments)
    let mut systems: Vec<(String, &Peer, &[&str])> = Vec::new();
    for peer in peers.iter().filter(|p| p.is_vm()) {
        systems.push((peer.name().to_string(), peer, &[]));
        if let Peer::Rvmm = peer {
            systems.push(("rvmm --hugepages".to_string(), peer, &["--hugepages"]));
        }
    }
    let mut series: Vec<Series> = systems.iter().map(|(n, _, _)| Series::new(n)).collect();
    for round in 0..WARMUP + iterations() {
        for (i, (_, peer, extra)) in systems.iter().enumerate() {
            let mut cmd = vm_command(peer, &spec, scratch);
            cmd.args(*extra);
            if let Some(t) = touch_ms(cmd) {
                if round >= WARMUP {
                    series[i].samples.push(t);
                }
            }
        }
    }
    let mut table = Table::new(
        "guest memory: first write to each page of 192 MiB",
        "ms",
        false,
    );
    table.series = series
        .into_iter()
        .filter(|s| !s.samples.is_empty())
        .collect();
    vec![table]
}
