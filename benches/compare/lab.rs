//! Linux and its network on every VM peer where a hardware-virtualized
//! /dev/kvm runs them: on a PVM host that is the hardware-KVM lab (see
//! `tests/common/lab.rs`), which this bench boots with itself, rvmm,
//! Firecracker, QEMU (with its libraries and firmware) and Debian's kernel
//! inside; elsewhere, this host.
//!
//! Each VMM in turn (A B C A B C) boots Debian's kernel, as the ELF all of
//! them take, with the Debian guest's initramfs and a virtio-net card on a
//! tap, with one command line. Measured: process start to the initramfs's
//! banner (user space); the VM exits until then, by kind, from the host
//! KVM's own counters (debugfs); a ping's round trip from the guest to the
//! host; TCP throughput each way (`guest-images/lab/tcpbench.c` in the
//! guest, 64 KiB writes; busybox nc sends a packet per KiB); block I/O on a
//! virtio disk, O_DIRECT, sequential 1 MiB and random 4 KiB requests
//! (`guest-images/lab/blkbench.c`); process start
//! to the shell answering a command, booted, and restored from a snapshot
//! of the same guest at its shell (rvmm, Firecracker). In the lab
//! everything is emulated, so its times say little about hardware; the
//! exit counts are what a hardware host would pay for.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{guest_image, in_lab, is_pvm_host, lab, tap::Tap, Console};
use crate::peers::{vm_command, Peer, VmSpec, QEMU};
use crate::restore;
use crate::stats::{Series, Table};

/// What the lab's bench binary is started with, inside L1.
pub const INNER_ARG: &str = "lab-inner";
const RESULT: &str = "rvmm-bench-result\t";
const CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd";
const TAP: &str = "rvmmbench0";
const MAC: &str = "06:00:0a:00:03:02";
const HOST_IP: &str = "10.0.3.1";
const BULK: usize = 16 << 20;
const FIRECRACKER_IN_L1: &str = "/lab/peers/firecracker";
/// One L1 boot: one round, every peer once.
const LAB_LIMIT: Duration = Duration::from_secs(15 * 60);
/// KVM's counters in debugfs: all exits, and those of each kind counted.
const EXIT_COUNTERS: [&str; 4] = ["exits", "io_exits", "mmio_exits", "halt_exits"];

/// The tables, by title: (title, unit, higher is better).
const TABLES: [(&str, &str, bool); 8] = [
    (
        "lab Linux: process start to user space (emulated host)",
        "s",
        false,
    ),
    ("lab Linux: VM exits to user space, all", "exits", false),
    (
        "lab Linux: VM exits to user space, port I/O",
        "exits",
        false,
    ),
    ("lab Linux: VM exits to user space, MMIO", "exits", false),
    ("lab Linux: VM exits to user space, HLT", "exits", false),
    (
        "lab Linux: VM exits to user space, other (MSR, interrupts, faults)",
        "exits",
        false,
    ),
    (
        "lab network: ping round trip, guest to host (emulated host)",
        "ms",
        false,
    ),
    (
        "lab network: TCP guest to host, 16 MiB (emulated host)",
        "MiB/s",
        true,
    ),
];
const TCP_IN_TABLE: (&str, &str, bool) = (
    "lab network: TCP host to guest, 16 MiB (emulated host)",
    "MiB/s",
    true,
);
/// A ready Linux: booted (every VM peer) or restored from a snapshot of the
/// same guest at its shell (the peers with snapshots), to its answer.
const READY_TABLES: [(&str, &str, bool); 2] = [
    (
        "lab Linux: process start to the shell answering a command (emulated host)",
        "s",
        false,
    ),
    (
        "lab restore: process start to a restored shell answering a command (emulated host)",
        "s",
        false,
    ),
];
/// What is typed at the shell, and what only the shell's answer contains
/// (the terminal echoes the command itself).
const QUESTION: &str = "echo lab-answer-$((6*7))";
const ANSWER: &str = "lab-answer-42";
/// Restores of each snapshot per L1 boot.
const RESTORES: usize = 3;
/// Block I/O through the guest's virtio-blk driver, bypassing its page
/// cache (`guest-images/lab/blkbench.c`): its mode, the MiB it moves, and
/// its table.
const BLOCK: [(&str, u64, (&str, &str, bool)); 4] = [
    (
        "seqread",
        32,
        (
            "lab block: sequential 1 MiB reads, O_DIRECT (emulated host)",
            "MiB/s",
            true,
        ),
    ),
    (
        "seqwrite",
        32,
        (
            "lab block: sequential 1 MiB writes, O_DIRECT (emulated host)",
            "MiB/s",
            true,
        ),
    ),
    (
        "randread",
        8,
        (
            "lab block: random 4 KiB reads, O_DIRECT (emulated host)",
            "MiB/s",
            true,
        ),
    ),
    (
        "randwrite",
        8,
        (
            "lab block: random 4 KiB writes, O_DIRECT (emulated host)",
            "MiB/s",
            true,
        ),
    ),
];
/// The guest's disk, in L1's tmpfs.
const DISK_MIB: usize = 64;

fn rounds() -> usize {
    std::env::var("RVMM_BENCH_LAB_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// The section: in the lab on a PVM host, here elsewhere.
pub fn lab_section(peers: &[Peer]) -> Vec<Table> {
    let mut tables: Vec<Table> = TABLES
        .iter()
        .chain([&TCP_IN_TABLE])
        .chain(&READY_TABLES)
        .chain(BLOCK.iter().map(|(_, _, table)| table))
        .map(|(title, unit, higher)| Table::new(title, unit, *higher))
        .collect();
    for table in &mut tables {
        table.series = peers
            .iter()
            .filter(|p| p.is_vm())
            .map(|p| Series::new(p.name()))
            .collect();
    }
    let lines: Vec<String> = if is_pvm_host() {
        match run_in_lab(peers) {
            Ok(lines) => lines,
            Err(e) => {
                eprintln!("lab: {e}");
                return Vec::new();
            }
        }
    } else {
        // Here, with this host's peers; results go through the same lines.
        let mut lines = Vec::new();
        measure_all(peers, rounds(), &mut |line| lines.push(line));
        lines
    };
    for line in &lines {
        let Some(fields) = line.strip_prefix(RESULT) else {
            continue;
        };
        let fields: Vec<&str> = fields.split('\t').collect();
        let [title, system, value] = fields[..] else {
            continue;
        };
        let (Some(table), Ok(value)) = (
            tables.iter_mut().find(|t| t.title == title),
            value.parse::<f64>(),
        ) else {
            continue;
        };
        if let Some(series) = table.series.iter_mut().find(|s| s.system == system) {
            series.samples.push(value);
        }
    }
    for table in &mut tables {
        table.series.retain(|s| !s.samples.is_empty());
    }
    tables.retain(|t| !t.series.is_empty());
    tables
}

/// Files L1 needs for the peers: Firecracker, QEMU with every library it
/// links and the firmware microvm loads, and Debian's kernel as an ELF.
fn extras(peers: &[Peer]) -> Result<Vec<lab::Extra>, String> {
    let kernel = images_dir().join("lab/vmlinux");
    if !kernel.is_file() {
        return Err(format!(
            "{} is missing: run guest-images/build.sh",
            kernel.display()
        ));
    }
    let mut extra = vec![(kernel, "lab/images/lab/vmlinux".to_string())];
    for peer in peers {
        match peer {
            Peer::Firecracker(bin) => extra.push((bin.clone(), FIRECRACKER_IN_L1[1..].to_string())),
            Peer::Qemu => {
                extra.push((PathBuf::from(QEMU), QEMU[1..].to_string()));
                let ldd = Command::new("ldd")
                    .arg(QEMU)
                    .output()
                    .map_err(|e| format!("ldd {QEMU}: {e}"))?;
                for line in String::from_utf8_lossy(&ldd.stdout).lines() {
                    // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)",
                    // or the loader: "/lib64/ld-linux-x86-64.so.2 (0x...)".
                    let path = line
                        .split("=>")
                        .last()
                        .and_then(|p| p.split_whitespace().next())
                        .filter(|p| p.starts_with('/'));
                    if let Some(path) = path {
                        extra.push((PathBuf::from(path), path[1..].to_string()));
                    }
                }
                for firmware in [
                    "bios-microvm.bin",
                    "pvh.bin",
                    "linuxboot_dma.bin",
                    "kvmvapic.bin",
                ] {
                    let path = Path::new("/usr/share/qemu").join(firmware);
                    if path.exists() {
                        extra.push((path, format!("usr/share/qemu/{firmware}")));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(extra)
}

fn images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images/out")
}

/// Each round in an L1 boot of its own: the emulated host now and then
/// stops for good (it resets, or wedges) with a guest running, and a round
/// it takes down is run once more in a fresh one.
fn run_in_lab(peers: &[Peer]) -> Result<Vec<String>, String> {
    let extra = extras(peers)?;
    let vm_count = peers.iter().filter(|p| p.is_vm()).count();
    let mut lines = Vec::new();
    for round in 1..=rounds() {
        for attempt in 1..=2 {
            eprintln!(
                "lab: round {round} of {}: booting the hardware-KVM lab (a few minutes)",
                rounds()
            );
            let args = [INNER_ARG.to_string(), "1".to_string()];
            let which = format!("bench-{round}-{attempt}");
            let job = format!("exec /lab/tests {}", args.join(" "));
            let (output, complete) = match lab::run(&job, &extra, LAB_LIMIT, &which) {
                Ok(run) => {
                    let done = run
                        .output()
                        .iter()
                        .filter(|l| l.starts_with("lab bench: done with "))
                        .count();
                    eprintln!("lab: L1's whole console is in {}", run.log().display());
                    (run.output().to_vec(), done == vm_count)
                }
                Err(e) => {
                    eprintln!("lab: {e}");
                    (Vec::new(), false)
                }
            };
            for line in &output {
                if !line.starts_with(RESULT) {
                    eprintln!("lab| {line}");
                }
            }
            // A round L1 did not finish counts only if it is not run again.
            if complete || attempt == 2 {
                lines.extend(output);
                break;
            }
            eprintln!("lab: L1 stopped before round {round} was done; running it once more");
        }
    }
    Ok(lines)
}

/// Inside L1: measures every peer there and prints the results.
pub fn inner(rounds: usize) {
    assert!(
        in_lab(),
        "{INNER_ARG} runs inside the hardware-KVM lab only"
    );
    let mut peers = vec![Peer::Rvmm];
    if Path::new(FIRECRACKER_IN_L1).is_file() {
        peers.push(Peer::Firecracker(FIRECRACKER_IN_L1.into()));
    }
    if Path::new(QEMU).is_file() {
        peers.push(Peer::Qemu);
    }
    measure_all(&peers, rounds, &mut |line| println!("{line}"));
}

fn measure_all(peers: &[Peer], rounds: usize, out: &mut dyn FnMut(String)) {
    let _ = Command::new("mount")
        .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
        .status();
    crate::common::tap::require_tun();
    let tap = Tap::create(TAP);
    tap.set_ipv4([10, 0, 3, 1], 24);
    let scratch = crate::common::scratch("lab-bench");
    std::fs::create_dir_all(&scratch).unwrap();
    let vms: Vec<&Peer> = peers.iter().filter(|p| p.is_vm()).collect();
    for round in 0..rounds {
        for peer in &vms {
            eprintln!("lab bench: round {}, {}", round + 1, peer.name());
            // Each figure is kept as soon as it is measured: a step that
            // fails (Firecracker's guest-to-host TCP sometimes stalls here)
            // costs only the figures after it.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                measure(peer, &scratch, &mut |title, value| {
                    out(format!("{RESULT}{title}\t{}\t{value}", peer.name()))
                })
            }));
            match result {
                Ok(()) => eprintln!("lab bench: done with {}", peer.name()),
                Err(_) => eprintln!(
                    "lab bench: {} failed in round {}; its figures after that step are missing",
                    peer.name(),
                    round + 1
                ),
            }
        }
    }
    measure_restores(&vms, &scratch, out);
}

/// Each peer with snapshots boots the Debian guest (no network card: rvmm
/// does not snapshot one) through its API, is snapshotted at its shell, and
/// is restored RESTORES times, A B A B, each timed to the shell's answer.
fn measure_restores(vms: &[&Peer], scratch: &Path, out: &mut dyn FnMut(String)) {
    let kernel = guest_image("lab/vmlinux");
    let initrd = guest_image("lab/debian-initramfs.cpio");
    let guest = restore::Guest {
        kernel: &kernel,
        initrd: Some(&initrd),
        boot_args: CMDLINE,
        // Both memory files sit in L1's tmpfs.
        mem_mib: 256,
        ready: "built-in shell (ash)",
        typed: QUESTION,
        answer: ANSWER,
        limit: Duration::from_secs(180),
    };
    let snapshots: Vec<(&Peer, (PathBuf, PathBuf))> = vms
        .iter()
        .copied()
        .filter(|p| restore::has_snapshots(p))
        .filter_map(|p| match restore::make_snapshot(p, &guest, scratch) {
            Ok(files) => Some((p, files)),
            Err(e) => {
                eprintln!("lab bench: no snapshot of {}: {e}", p.name());
                None
            }
        })
        .collect();
    for _ in 0..RESTORES {
        for (peer, files) in &snapshots {
            match restore::restore_once(peer, &guest, files, scratch) {
                Some(sample) => out(format!(
                    "{RESULT}{}\t{}\t{}",
                    READY_TABLES[1].0,
                    peer.name(),
                    sample.answered / 1000.0
                )),
                None => eprintln!("lab bench: a restore of {} did not answer", peer.name()),
            }
        }
    }
    for (_, (state, memory)) in snapshots {
        let _ = std::fs::remove_file(state);
        let _ = std::fs::remove_file(memory);
    }
}

/// The sum of KVM's counter `name` over the VMs that exist now.
fn kvm_counter(name: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/kernel/debug/kvm/{name}"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Every counter KVM keeps in debugfs (its files of one number).
fn all_kvm_counters() -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir("/sys/kernel/debug/kvm") else {
        return Vec::new();
    };
    let mut counters: Vec<(String, u64)> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let value = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((name, value))
        })
        .collect();
    counters.sort();
    counters
}

/// One boot of `peer`: its figures, each given to `record` with its
/// table's title as soon as it is measured.
fn measure(peer: &Peer, scratch: &Path, record: &mut dyn FnMut(&str, f64)) {
    let limit = Duration::from_secs(180);
    // 16 MiB at 1 MiB/s, under emulation.
    let tcp_limit = Duration::from_secs(60);
    let kernel = guest_image("lab/vmlinux");
    let initrd = guest_image("lab/debian-initramfs.cpio");
    let disk = scratch.join("lab-disk.img");
    std::fs::write(&disk, vec![0u8; DISK_MIB << 20]).expect("write the guest's disk");
    let disks = [disk];
    let spec = VmSpec {
        kernel: &kernel,
        mem_mib: 512,
        cmdline: CMDLINE,
        disks: &disks,
        initrd: Some(&initrd),
        net: Some((TAP, MAC)),
    };
    let before: Vec<u64> = EXIT_COUNTERS.iter().map(|c| kvm_counter(c)).collect();
    let all_before = all_kvm_counters();
    let started = Instant::now();
    let mut vm = Console::start_command(vm_command(peer, &spec, scratch), peer.name());
    vm.expect("debian-guest: user space (", limit);
    let boot = started.elapsed().as_secs_f64();
    let exits: Vec<f64> = EXIT_COUNTERS
        .iter()
        .zip(&before)
        .map(|(c, b)| kvm_counter(c).saturating_sub(*b) as f64)
        .collect();
    let other = (exits[0] - exits[1] - exits[2] - exits[3]).max(0.0);
    // For the reader of the log: what else KVM counted over the boot.
    let changed: Vec<String> = all_kvm_counters()
        .into_iter()
        .filter_map(|(name, after)| {
            let before = all_before
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, v)| *v);
            (after > before).then(|| format!("{name}={}", after - before))
        })
        .collect();
    eprintln!(
        "lab bench: {} KVM counters to user space: {}",
        peer.name(),
        changed.join(" ")
    );
    record(TABLES[0].0, boot);
    for (table, value) in TABLES[1..5].iter().zip(&exits) {
        record(table.0, *value);
    }
    record(TABLES[5].0, other);
    vm.expect("built-in shell (ash)", limit);
    vm.send(&format!("{QUESTION}\n"));
    vm.expect(ANSWER, limit);
    record(READY_TABLES[0].0, started.elapsed().as_secs_f64());
    vm.run("stty cols 1000", limit);
    for (mode, mib, table) in BLOCK {
        let (status, out) = vm.run(&format!("blkbench {mode} /dev/vda {mib}"), limit);
        // "blkbench: seqread 33554432 bytes in 412345678 ns"
        let words: Vec<&str> = out
            .iter()
            .find(|l| l.starts_with("blkbench: "))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        match (
            words.get(2).map(|w| w.parse::<f64>()),
            words.get(5).map(|w| w.parse::<f64>()),
        ) {
            (Some(Ok(bytes)), Some(Ok(ns))) => {
                record(table.0, bytes / (1 << 20) as f64 / (ns / 1e9))
            }
            // The network's figures after it still count.
            _ => eprintln!(
                "lab bench: {}: blkbench {mode} failed ({status}): {out:?}",
                peer.name()
            ),
        }
    }
    let (status, out) = vm.run(
        &format!("ip addr add 10.0.3.2/24 dev eth0 && ip link set eth0 up && ping -c 2 -W 10 {HOST_IP} >/dev/null"),
        limit,
    );
    assert_eq!(
        status,
        0,
        "{}: the guest's network did not come up: {out:?}",
        peer.name()
    );
    let (_, out) = vm.run(&format!("ping -c 20 -i 0.2 -q {HOST_IP}"), limit);
    // "round-trip min/avg/max = 0.412/0.573/1.020 ms"
    let rtt: f64 = out
        .iter()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}: no ping summary in {out:?}", peer.name()));
    record(TABLES[6].0, rtt);
    let mib = |d: Duration| BULK as f64 / (1 << 20) as f64 / d.as_secs_f64();

    // Guest to host: the host reads BULK bytes, timed from the first.
    let listener = TcpListener::bind((HOST_IP, 5001)).expect("listen on the tap's address");
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().ok()?;
        stream.set_read_timeout(Some(tcp_limit)).ok()?;
        let mut buf = vec![0u8; 1 << 16];
        let mut first = None;
        let mut got = 0;
        while got < BULK {
            let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
            first.get_or_insert_with(Instant::now);
            got += n;
        }
        Some(first?.elapsed())
    });
    vm.run(&format!("tcpbench send {HOST_IP} 5001 {BULK}"), tcp_limit);
    let out_time = reader.join().ok().flatten().unwrap_or_else(|| {
        panic!(
            "{}: the guest's TCP stream did not arrive whole",
            peer.name()
        )
    });
    record(TABLES[7].0, mib(out_time));

    // Host to guest: timed from connect to the guest's close after EOF.
    vm.run("(tcpbench sink 5002 &)", limit);
    let deadline = Instant::now() + limit;
    let mut stream = loop {
        match TcpStream::connect("10.0.3.2:5002") {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "{}: cannot reach the guest's sink: {e}",
                    peer.name()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    stream.set_read_timeout(Some(tcp_limit)).unwrap();
    let sent = Instant::now();
    stream.write_all(&vec![0x5a; BULK]).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let finished = stream.read_to_end(&mut rest).is_ok();
    assert!(finished, "{}: the guest's sink never finished", peer.name());
    record(TCP_IN_TABLE.0, mib(sent.elapsed()));

    vm.send("reboot -f\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while vm.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(vm);
}
