//! `cargo bench`: rvmm side by side with QEMU's microvm, Firecracker
//! (RVMM_BENCH_FIRECRACKER, or else ../shared/peers/firecracker beside the
//! checkout), a runc container and a Docker one, on the same guests and
//! command lines, in one run. Prints a table per measure (min / median /
//! max, ratio to rvmm) and writes target/bench/results.json and
//! target/bench/report.md, whose end says which of the targets
//! this run met.
//!
//! Sections: startup, breakdown, restore, phases, memory, guest-memory, density, block, images,
//! linux (on PVM hosts only when named: it takes minutes there), lab (Linux
//! to user space, its VM exits and its network on every VM peer, in the
//! hardware-KVM lab on PVM hosts: about ten minutes). Pass names to run only
//! some (`cargo bench -- startup memory`). Knobs: RVMM_BENCH_ITERATIONS
//! (default 15), RVMM_BENCH_DENSITY (largest N, default 200),
//! RVMM_BENCH_LINUX=1 (the Linux boot on PVM hosts too),
//! RVMM_BENCH_LAB_ROUNDS (default 3).

mod breakdown;
#[path = "../../tests/common/mod.rs"]
mod common;
mod density;
mod docker;
mod guest_memory;
mod instance;
mod lab;
mod linux;
mod peers;
mod process;
mod restore;
mod settle;
mod stats;
mod targets;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{guest, pseudo_random_bytes, Entry};
use instance::{Idle, Instance};
use peers::{vm_command, Bundle, Peer, VmSpec};
use process::{start_until, time_run};
use stats::{Series, Table};

const MIB: u64 = 1 << 20;
pub const WARMUP: usize = 3;

pub fn iterations() -> usize {
    std::env::var("RVMM_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

fn scratch_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `f(peer)` for every peer in turn (A B A B ...), warm-up first,
/// each run once the host has settled; a run's figures go to `tables`
/// in order.
fn interleave(peers: &[Peer], mut f: impl FnMut(&Peer) -> Option<Vec<f64>>, tables: &mut [Table]) {
    interleave_partial(
        peers,
        |peer| Some(f(peer)?.into_iter().map(Some).collect()),
        tables,
    );
}

/// As [`interleave`], for runs that show some figures and not others (a
/// peer whose log has no such line): None leaves that table's cell empty.
pub fn interleave_partial(
    peers: &[Peer],
    mut f: impl FnMut(&Peer) -> Option<Vec<Option<f64>>>,
    tables: &mut [Table],
) {
    for t in tables.iter_mut() {
        t.series = peers.iter().map(|p| Series::new(p.name())).collect();
    }
    for round in 0..WARMUP + iterations() {
        for (i, peer) in peers.iter().enumerate() {
            settle::settle();
            let Some(values) = f(peer) else { continue };
            if round >= WARMUP {
                for (t, v) in tables.iter_mut().zip(values) {
                    t.series[i].samples.extend(v);
                }
            }
        }
    }
    for t in tables.iter_mut() {
        t.series.retain(|s| !s.samples.is_empty());
    }
}

fn startup(peers: &[Peer], scratch: &Path) -> Vec<Table> {
    let kernel = guest("hello", Entry::Pvh);
    let spec = VmSpec {
        kernel: &kernel,
        mem_mib: 128,
        cmdline: "console=ttyS0",
        disks: &[],
        initrd: None,
        net: None,
    };
    let bundles: Vec<Option<Bundle>> = peers
        .iter()
        .map(|p| {
            Bundle::for_peer(
                p,
                scratch,
                &["/bin/busybox", "echo", "Hello from a container"],
            )
        })
        .collect();
    let mut tables = [
        Table::new("start-up: process start to first guest output", "ms", false),
        Table::new("start-up: process start to exit", "ms", false),
    ];
    interleave(
        peers,
        |peer| {
            let index = peers.iter().position(|p| p.name() == peer.name()).unwrap();
            let (cmd, marker) = match peer {
                Peer::Container(rt) => (
                    bundles[index].as_ref()?.run_command(rt),
                    "Hello from a container",
                ),
                Peer::Docker(docker) => (
                    docker.run_command(&["/bin/busybox", "echo", "Hello from a container"], false),
                    "Hello from a container",
                ),
                vm => (
                    vm_command(vm, &spec, scratch),
                    "Hello from the rvmm PVH test guest",
                ),
            };
            let (first, exit) = time_run(cmd, marker)?;
            Some(vec![first, exit])
        },
        &mut tables,
    );
    tables.to_vec()
}

/// rvmm's own phases, from its debug log.
fn phases(scratch: &Path) -> Vec<Table> {
    let kernel = guest("hello", Entry::Pvh);
    let names = [
        "VM created",
        "memory mapped",
        "kernel loaded",
        "first KVM_RUN",
    ];
    let mut wall: Vec<Series> = names.iter().map(|n| Series::new(n)).collect();
    let mut cpu: Vec<Series> = names.iter().map(|n| Series::new(n)).collect();
    for round in 0..WARMUP + iterations() {
        let spec = VmSpec {
            kernel: &kernel,
            mem_mib: 128,
            cmdline: "console=ttyS0",
            disks: &[],
            initrd: None,
            net: None,
        };
        let out = vm_command(&Peer::Rvmm, &spec, scratch)
            .env("RUST_LOG", "rvmm::vmm=debug")
            .output()
            .unwrap();
        if round < WARMUP {
            continue;
        }
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            let Some(rest) = line.split("phase: ").nth(1) else {
                continue;
            };
            for (i, name) in names.iter().enumerate() {
                if let Some(times) = rest.strip_prefix(&format!("{name} at ")) {
                    let nums: Vec<f64> = times.split(' ').filter_map(|w| w.parse().ok()).collect();
                    if let [w, c] = nums[..] {
                        wall[i].samples.push(w);
                        cpu[i].samples.push(c);
                    }
                }
            }
        }
    }
    let mut t_wall = Table::new("rvmm phases since exec, wall", "ms", false);
    t_wall.series = wall;
    let mut t_cpu = Table::new("rvmm phases since exec, CPU", "ms", false);
    t_cpu.series = cpu;
    vec![t_wall, t_cpu]
}

/// Memory of an idle guest's VMM outside guest RAM (or of a container:
/// its cgroup plus its `runc run`, or plus its shim and what Docker's
/// daemon grew by), as RSS, PSS and USS. One VM runs at a time, so PSS and
/// USS differ only by what the VMM shares with processes other than VMs
/// (libraries); the density section shows PSS with many.
fn memory(peers: &[Peer], scratch: &Path) -> Vec<Table> {
    let idles: Vec<Idle> = peers.iter().map(|p| Idle::new(p, scratch)).collect();
    let mut out = Vec::new();
    for mem_mib in [128, 2048] {
        let mut tables = [
            Table::new(
                &format!("memory overhead, {mem_mib} MiB guest: RSS outside guest RAM"),
                "MiB",
                false,
            ),
            Table::new(
                &format!("memory overhead, {mem_mib} MiB guest: PSS outside guest RAM"),
                "MiB",
                false,
            ),
            Table::new(
                &format!("memory overhead, {mem_mib} MiB guest: USS (private) outside guest RAM"),
                "MiB",
                false,
            ),
        ];
        interleave(
            peers,
            |peer| {
                let index = peers.iter().position(|p| p.name() == peer.name()).unwrap();
                let daemon_before = instance::daemon_memory(peer);
                let instance = idles[index].start(peer, mem_mib, scratch)?;
                std::thread::sleep(Duration::from_millis(100));
                let kib = instance
                    .memory()
                    .map(|m| m + instance::daemon_memory(peer).saturating_sub(daemon_before));
                Instance::stop_all(vec![instance]);
                let kib = kib?;
                Some(vec![kib.rss / 1024.0, kib.pss / 1024.0, kib.uss / 1024.0])
            },
            &mut tables,
        );
        out.extend(tables);
    }
    cleanup_containers();
    out
}

pub fn cleanup_containers() {
    if let Ok(out) = std::process::Command::new("runc")
        .arg("list")
        .arg("-q")
        .output()
    {
        for name in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("rvmm-bench-"))
        {
            let _ = std::process::Command::new("runc")
                .args(["delete", "-f", name])
                .status();
        }
    }
    docker::remove_all();
}

fn block(peers: &[Peer], scratch: &Path) -> Vec<Table> {
    let kernel = guest("blk", Entry::Pvh);
    let disk = scratch.join("bench-disk.img");
    std::fs::write(&disk, pseudo_random_bytes(64 * MIB as usize, 9)).unwrap();
    let disks = [disk];
    let vms: Vec<Peer> = peers.iter().filter(|p| p.is_vm()).cloned().collect();
    let modes = [
        ("seqread", "sequential 64 KiB reads"),
        ("seqwrite", "sequential 64 KiB writes"),
        ("randread", "random 4 KiB reads"),
        ("randwrite", "random 4 KiB writes"),
    ];
    let mut out = Vec::new();
    for (mode, title) in modes {
        let mut table = [Table::new(
            &format!("block I/O, polled guest driver: {title}"),
            "MiB/s",
            true,
        )];
        interleave(
            &vms,
            |peer| {
                let bytes: u64 = if mode.starts_with("seq") {
                    64 * MIB
                } else {
                    4096 * 4096
                };
                // Timed within one run, from the guest's line before its
                // first request to its line after the last, so the VM's start
                // and exit (and their noise) stay out of the figure.
                let cmdline = format!("console=ttyS0 blkbench.{mode}");
                let spec = VmSpec {
                    kernel: &kernel,
                    mem_mib: 128,
                    cmdline: &cmdline,
                    disks: &disks,
                    initrd: None,
                    net: None,
                };
                let mut vm = start_until(vm_command(peer, &spec, scratch), "blkbench: start")?;
                let began = Instant::now();
                let moved = vm.read_until("blkbench: moved");
                let took = began.elapsed();
                // Counted only when the guest moved every byte it was asked
                // to and the VMM exited.
                let exited = vm.finish();
                let all = String::from_utf8_lossy(&vm.seen)
                    .contains(&format!("blkbench: moved {bytes:#018x}"));
                (moved && exited && all)
                    .then(|| vec![bytes as f64 / MIB as f64 / took.as_secs_f64().max(1e-4)])
            },
            &mut table,
        );
        out.extend(table);
    }
    out
}

fn images(peers: &[Peer], scratch: &Path) -> Vec<Table> {
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len() as f64 / MIB as f64)
            .ok()
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images/out");
    let linux = size(&root.join("bzImage"))
        .zip(size(&root.join("initramfs.cpio")))
        .map(|(k, i)| k + i);
    let mut table = Table::new(
        "image size: kernel + initramfs, or container rootfs",
        "MiB",
        false,
    );
    for peer in peers {
        let mut s = Series::new(peer.name());
        match peer {
            Peer::Container(rt) => {
                if let Some(b) = Bundle::new(rt, scratch, &["/bin/busybox", "true"]) {
                    s.samples.push(b.rootfs_bytes() as f64 / MIB as f64);
                }
            }
            Peer::Docker(docker) => {
                s.samples
                    .extend(docker.image_bytes().map(|b| b as f64 / MIB as f64));
            }
            _ => s.samples.extend(linux),
        }
        table.series.push(s);
    }
    if linux.is_none() {
        eprintln!(
            "images: guest-images/out is empty; run guest-images/build.sh for the VM image sizes"
        );
    }
    vec![table]
}

/// The guest images that the images, linux and lab sections use, made (or
/// found up to date in its cache, in a second) by the project's own
/// script, which installs what it needs: a fresh clone benches them too.
fn build_guest_images() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images/build.sh");
    eprintln!("bench setup: guest-images/build.sh (minutes the first time, then cached)");
    let status = std::process::Command::new(&script)
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!(
            "bench setup: guest-images/build.sh failed ({s}); the images, linux and lab sections say what they miss"
        ),
        Err(e) => eprintln!("bench setup: cannot run {}: {e}", script.display()),
    }
}

fn host_description() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kind = if Path::new("/sys/module/kvm_pvm").exists() {
        "PVM-backed KVM (nested; guest kernel code is emulated)"
    } else {
        "hardware KVM"
    };
    format!(
        "{} CPUs ({cpu}), {kind}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if wanted.first().map(String::as_str) == Some(lab::INNER_ARG) {
        // This is the copy of the bench inside the hardware-KVM lab.
        let rounds = wanted.get(1).and_then(|r| r.parse().ok()).unwrap_or(1);
        lab::inner(rounds);
        return;
    }
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    common::require_kvm();
    let scratch = scratch_dir();
    let containers_run = ["startup", "restore", "memory", "density", "images"]
        .iter()
        .any(|name| run(name));
    if ["images", "linux", "lab"].iter().any(|name| run(name)) {
        build_guest_images();
    }
    let peers = peers::available(&scratch, containers_run);
    let mut systems: Vec<String> = peers.iter().map(|p| p.name().to_string()).collect();
    eprintln!("comparing: {}", systems.join(", "));

    let mut tables: Vec<Table> = Vec::new();
    let asked_for_linux = wanted.iter().any(|w| w == "linux");
    let sections: [(&str, &dyn Fn() -> Vec<Table>); 11] = [
        ("startup", &|| startup(&peers, &scratch)),
        ("breakdown", &|| breakdown::breakdown(&peers, &scratch)),
        ("restore", &|| restore::restore(&peers, &scratch)),
        ("phases", &|| phases(&scratch)),
        ("memory", &|| memory(&peers, &scratch)),
        ("guest-memory", &|| {
            guest_memory::guest_memory(&peers, &scratch)
        }),
        ("density", &|| density::density(&peers, &scratch)),
        ("block", &|| block(&peers, &scratch)),
        ("images", &|| images(&peers, &scratch)),
        ("linux", &|| {
            linux::linux_boot(&peers, &scratch, asked_for_linux)
        }),
        ("lab", &|| lab::lab_section(&peers)),
    ];
    for (name, section) in sections {
        if !run(name) {
            continue;
        }
        eprintln!("running {name} ...");
        for t in section() {
            print!("{}", t.render());
            tables.push(t);
        }
    }

    let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out_dir).unwrap();
    let json: Vec<String> = tables.iter().map(Table::to_json).collect();
    std::fs::write(
        out_dir.join("results.json"),
        format!("[{}]\n", json.join(",\n")),
    )
    .unwrap();
    let comparable: Vec<Table> = tables
        .iter()
        .filter(|t| !t.title.starts_with("rvmm phases"))
        .cloned()
        .collect();
    // Series beside the peers' own (rvmm --hugepages) get columns too.
    for t in &comparable {
        for s in &t.series {
            if !systems.contains(&s.system) {
                systems.push(s.system.clone());
            }
        }
    }
    let ran: Vec<&str> = sections
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| run(name))
        .collect();
    let method = format!(
        "Sections run: {}. In startup, breakdown, restore, memory, guest-memory and block the systems ran in turn, A B A B, {WARMUP} warm-up rounds dropped, then {} rounds, {} (a killed VM's teardown goes on in the host kernel, a Docker container's removal in its daemon). Density went up its steps of N in turn for every system (A B A B), one pass per step; images is one measurement; the Linux boot on a PVM host is one run per system; the lab's rounds are one L1 boot each (see README).",
        ran.join(", "),
        iterations(),
        settle::method()
    );
    let mut report = stats::markdown_report(&comparable, &systems, &host_description(), &method);
    let verdicts = targets::verdicts(&tables);
    if !verdicts.is_empty() {
        report.push_str("\nTargets (rvmm's median against the peer's, this run):\n\n");
        for verdict in verdicts {
            report.push_str(&format!("- {verdict}\n"));
        }
    }
    std::fs::write(out_dir.join("report.md"), &report).unwrap();
    println!("\n{report}");
    println!("written: target/bench/results.json, target/bench/report.md");
    let _ = std::fs::remove_dir_all(&scratch);
}
