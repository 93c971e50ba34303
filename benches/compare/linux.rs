//! Linux boot: the guest-images kernel (ELF vmlinux, which every peer boots
//! through its PVH note) and initramfs, timed from process start to the
//! initramfs banner on hosts that run guest user space, or to the kernel's
//! "Run /init" on PVM hosts, where the figure is mostly the host emulating
//! guest kernel code and a boot takes minutes: there it runs only when asked
//! for (`cargo bench -- linux` or RVMM_BENCH_LINUX=1), once per system.

use std::path::Path;

use crate::common::is_pvm_host;
use crate::peers::{vm_command, Peer, VmSpec};
use crate::process::{start_until_within, stop};
use crate::stats::{Series, Table};
use crate::{iterations, WARMUP};

pub fn linux_boot(peers: &[Peer], scratch: &Path, asked_for: bool) -> Vec<Table> {
    let pvm = is_pvm_host();
    if pvm && !asked_for && std::env::var_os("RVMM_BENCH_LINUX").is_none() {
        eprintln!(
            "linux: skipped on this PVM host, where a boot to Run /init takes minutes; \
             `cargo bench -- linux` (or RVMM_BENCH_LINUX=1) runs it"
        );
        return Vec::new();
    }
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images/out");
    let (kernel, initrd) = (images.join("vmlinux"), images.join("initramfs.cpio"));
    if !kernel.is_file() || !initrd.is_file() {
        eprintln!("linux: guest-images/out is empty; run guest-images/build.sh first");
        return Vec::new();
    }
    // The same command line for everyone: on PVM hosts it carries the flags
    // rvmm would add by itself, so the peers get them too.
    let mut cmdline = String::from("console=ttyS0 reboot=k panic=-1");
    if pvm {
        for flag in rvmm::host::PVM_KERNEL_FLAGS {
            cmdline.push(' ');
            cmdline.push_str(flag);
        }
    }
    let spec = VmSpec {
        kernel: &kernel,
        mem_mib: 512,
        cmdline: &cmdline,
        disks: &[],
        initrd: Some(&initrd),
        net: None,
    };
    let (marker, title, warmup, runs) = if pvm {
        (
            "Run /init as init process",
            "Linux boot: process start to \"Run /init\" (PVM host: emulator-dominated, one run)",
            0,
            1,
        )
    } else {
        (
            "rvmm-guest: initramfs ready",
            "Linux boot: process start to /init's first line",
            WARMUP.min(1),
            iterations().min(5),
        )
    };
    // PVM hosts emulate guest kernel code: minutes to Run /init.
    let limit = std::time::Duration::from_secs(if pvm { 900 } else { 120 });
    let vms: Vec<&Peer> = peers.iter().filter(|p| p.is_vm()).collect();
    let mut series: Vec<Series> = vms.iter().map(|p| Series::new(p.name())).collect();
    for round in 0..warmup + runs {
        for (i, peer) in vms.iter().enumerate() {
            eprintln!("linux: booting on {} ...", peer.name());
            // What the guest does after the marker is not measured: stop it.
            match start_until_within(vm_command(peer, &spec, scratch), marker, limit) {
                Some(started) => {
                    if round >= warmup {
                        series[i].samples.push(started.elapsed.as_secs_f64());
                    }
                    stop(started.child);
                }
                None => eprintln!("linux: {} never printed {marker:?}", peer.name()),
            }
        }
    }
    let mut table = Table::new(title, "s", false);
    table.series = series
        .into_iter()
        .filter(|s| !s.samples.is_empty())
        .collect();
    vec![table]
}
