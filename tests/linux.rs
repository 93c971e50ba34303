//! Boots real Linux kernels with rvmm.
//!
//! Two kinds of check. The boot checks run on every host and go as far as a
//! PVM-backed host allows (see the project docs on KVM test hosts): up to
//! "Run /init", after the kernel has probed its virtio disks and CPUs. The
//! user-space checks (shell, SMP, disks from inside the guest, exits) need
//! hardware virtualization: on a host with VT-x or AMD-V they run directly;
//! on a PVM host each runs, unchanged, inside the hardware-KVM lab
//! (`common/lab.rs`), which boots once for all of them. Each says which.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::{
    guest_image, in_lab, is_pvm_host, lab, pseudo_random_bytes, require_kvm, scratch, thread_modes,
    Console,
};

/// Guest kernel code is emulated on PVM hosts: minutes, not milliseconds.
const PVM_BOOT_LIMIT: Duration = Duration::from_secs(1200);
const BOOT_LIMIT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;
const SECTOR: usize = 512;

/// Held by each Linux boot on this host and by the lab while it runs: two
/// cores cannot run a PVM-emulated guest kernel beside the lab's emulated
/// host without starving it, and a starved L1 wedges ("soft lockup") or
/// its guests fail at random.
static ALONE: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn boot_limit() -> Duration {
    if is_pvm_host() {
        PVM_BOOT_LIMIT
    } else {
        BOOT_LIMIT
    }
}

/// Limit for each step of a user-space check: everything is emulated in the lab.
fn step_limit() -> Duration {
    if in_lab() {
        Duration::from_secs(120)
    } else {
        BOOT_LIMIT
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A 64 MiB disk of pseudo-random bytes with an MBR and two Linux
/// partitions: 16 MiB from sector 2048, 32 MiB from sector 34816.
fn partitioned_disk(name: &str) -> PathBuf {
    let mut image = pseudo_random_bytes(64 * MIB, 11);
    image[446..510].fill(0);
    let entry = |slot: usize, start: u32, sectors: u32, image: &mut Vec<u8>| {
        let at = 446 + 16 * slot;
        image[at + 4] = 0x83; // Linux
        image[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        image[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
    };
    entry(0, 2048, 32768, &mut image);
    entry(1, 34816, 65536, &mut image);
    image[510] = 0x55;
    image[511] = 0xaa;
    let path = scratch(name);
    std::fs::write(&path, image).unwrap();
    path
}

fn random_disk(name: &str, mib: usize, seed: u64) -> PathBuf {
    let path = scratch(name);
    std::fs::write(&path, pseudo_random_bytes(mib * MIB, seed)).unwrap();
    path
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils) is needed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------
// Boot checks: every host, up to "Run /init".

#[test]
fn bzimage_probes_two_disks_and_reaches_init() {
    require_kvm();
    let _alone = alone();
    let disk_a = partitioned_disk("boot-partitioned.img");
    let disk_b = random_disk("boot-plain.img", 8, 3);
    let mut args = bzimage_args("1");
    args.extend(["--disk".to_string(), path(&disk_a).to_string()]);
    args.extend(["--disk".to_string(), path(&disk_b).to_string()]);
    let mut vm = Console::start(&strs(&args), "linux-bzimage");
    let limit = boot_limit();
    vm.expect("Linux version 6.1", limit);
    vm.expect("Command line: console=ttyS0 reboot=k", limit);
    vm.expect("[vda] 131072 512-byte logical blocks", limit);
    vm.expect(" vda: vda1 vda2", limit);
    vm.expect("[vdb] 16384 512-byte logical blocks", limit);
    vm.expect("Run /init as init process", limit);
    let log = vm.seen.join("\n");
    assert!(
        !log.contains("i8042: Can't read CTR"),
        "i8042 probe failed:\n{log}"
    );
    if is_pvm_host() {
        assert!(
            vm.stderr().contains("PVM-backed"),
            "rvmm must log the flags it added:\n{}",
            vm.stderr()
        );
    }
    eprintln!("bzImage probed both disks and their partitions and reached 'Run /init'");
}

#[test]
fn vmlinux_mounts_its_root_from_a_disk() {
    require_kvm();
    let _alone = alone();
    let kernel = guest_image("vmlinux");
    // A private copy: the guest mounts it read-write.
    let rootfs = scratch("boot-rootfs.ext4");
    std::fs::copy(guest_image("rootfs.ext4"), &rootfs).unwrap();
    let args = [
        "--kernel",
        path(&kernel),
        "--mem",
        "256",
        "--cmdline",
        "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw",
        "--disk",
        path(&rootfs),
    ];
    let mut vm = Console::start(&args, "linux-vmlinux");
    let limit = boot_limit();
    vm.expect("Linux version 6.1", limit);
    vm.expect("[vda] 65536 512-byte logical blocks", limit);
    vm.expect("VFS: Mounted root (ext4 filesystem)", limit);
    vm.expect("Run /sbin/init as init process", limit);
    eprintln!("vmlinux (PVH entry) mounted its ext4 root from vda and reached init");
}

#[test]
fn four_vcpus_and_4_gib_are_listed() {
    require_kvm();
    let _alone = alone();
    let kernel = guest_image("vmlinux");
    let initrd = guest_image("initramfs.cpio");
    let args = [
        "--kernel",
        path(&kernel),
        "--initrd",
        path(&initrd),
        "--cpus",
        "4",
        "--mem",
        "4096",
        // earlyprintk: on PVM hosts the boot stops when the secondary CPUs
        // are started, before the serial console driver would print anything.
        "--cmdline",
        "console=ttyS0 earlyprintk=serial reboot=k panic=1 pci=off",
    ];
    let mut vm = Console::start(&args, "linux-smp");
    let limit = boot_limit();
    // 4096 MiB: 3328 MiB below the MMIO hole, the other 768 MiB from 4 GiB.
    vm.expect(
        "BIOS-e820: [mem 0x0000000100000000-0x000000012fffffff] usable",
        limit,
    );
    vm.expect("smpboot: Allowing 4 CPUs", limit);
    if is_pvm_host() {
        assert!(
            vm.stderr().contains("secondary vCPUs cannot start"),
            "{}",
            vm.stderr()
        );
    }
    eprintln!("the kernel lists 4 CPUs from the MP table and the full 4 GiB");
}

// ---------------------------------------------------------------------------
// User-space checks: directly on hardware KVM, in the lab on PVM hosts.

/// Every user-space check, by its test name: the lab runs them all in one L1 boot.
const USER_SPACE_CHECKS: &[&str] = &[
    "user_space_shell_answers_typed_commands_on_one_cpu",
    "user_space_two_cpus_and_sigterm_shuts_down_in_order",
    "user_space_four_cpus_with_a_disk_and_ctrl_a_x_on_a_terminal",
    "user_space_disks_read_and_written_from_inside_the_guest",
    "user_space_vmlinux_with_its_root_on_a_disk_reaches_the_shell",
    "user_space_debian_kernel_reads_its_virtio_disk",
    "user_space_poweroff_and_reboot_as_typed_end_rvmm_with_0",
    "user_space_debian_kernel_syncs_on_sigterm_and_powers_off_through_acpi",
    "user_space_debian_kernel_talks_tcp_over_virtio_net",
    "user_space_debian_kernel_talks_over_vsock_both_ways",
    "user_space_a_shell_snapshotted_and_restored_answers_and_keeps_its_disk",
];

/// Runs `check` where user space can run: here on a hardware-virtualized
/// host (the lab's L1 is one), else in the lab, which runs this same test.
fn user_space(name: &str, check: impl FnOnce()) {
    assert!(
        USER_SPACE_CHECKS.contains(&name),
        "{name} must be listed in USER_SPACE_CHECKS for the lab to run it"
    );
    if is_pvm_host() {
        let _alone = alone();
        lab::check(name, USER_SPACE_CHECKS);
        return;
    }
    require_kvm();
    eprintln!(
        "{name}: running on this host's hardware-virtualized /dev/kvm{}",
        if in_lab() { " (the lab's L1)" } else { "" }
    );
    check();
}

/// Starts rvmm and waits for the shell of the guest images' /init, whose
/// banner names the CPUs the guest brought up; checks the seccomp filters.
fn boot_to_shell(vm: &mut Console, banner: &str) -> String {
    let line = vm.expect(banner, step_limit());
    vm.expect("built-in shell (ash)", step_limit());
    assert_seccomp_on_every_thread(vm.child.id());
    // A wide terminal, so the shell never wraps the echo of a typed command.
    vm.run("stty cols 1000", step_limit());
    line
}

/// Every rvmm thread (event loop, vCPUs) runs under a seccomp filter.
fn assert_seccomp_on_every_thread(pid: u32) {
    let modes = thread_modes(pid);
    assert!(modes.len() >= 2, "{modes:?}");
    for (name, mode) in &modes {
        assert_eq!(
            mode, "2",
            "rvmm thread {name} runs without a seccomp filter"
        );
    }
}

/// The guest's `nproc` and its kernel's SMP line both say `cpus`.
fn assert_cpus(vm: &mut Console, cpus: u32) {
    let plural = if cpus == 1 { "CPU" } else { "CPUs" };
    let brought_up = format!("smp: Brought up 1 node, {cpus} {plural}");
    assert!(
        vm.seen.iter().any(|l| l.contains(&brought_up)),
        "no {brought_up:?} in the boot log:\n{}",
        vm.seen.join("\n")
    );
    let (status, out) = vm.run("nproc", step_limit());
    assert_eq!((status, out), (0, vec![cpus.to_string()]), "guest's nproc");
}

/// The guest's sha256 of `device` equals the host's of `image`.
fn assert_guest_checksum(vm: &mut Console, device: &str, image: &Path) {
    let (status, out) = vm.run(&format!("sha256sum {device}"), step_limit());
    let expected = sha256(image);
    assert_eq!(status, 0, "sha256sum {device} failed: {out:?}");
    assert_eq!(
        out.first().and_then(|l| l.split_whitespace().next()),
        Some(expected.as_str()),
        "the guest read {device} differently from the host file: {out:?}"
    );
}

/// No rvmm process whose arguments name `marker` is left on the host.
fn assert_no_rvmm_left(marker: &Path) {
    let marker = marker.to_str().unwrap();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|p| std::fs::read(p.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(marker))
        .collect();
    assert!(left.is_empty(), "rvmm processes left behind: {left:?}");
}

fn send_sigterm(vm: &Console) {
    // SAFETY: kill(2) on the child this test started and still owns.
    let sent = unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    assert_eq!(sent, 0, "{}", std::io::Error::last_os_error());
}

fn reboot_and_expect_status_0(vm: &mut Console) {
    vm.send("reboot -f\n");
    let status = vm.wait_exit(step_limit());
    assert_eq!(
        status.code(),
        Some(0),
        "rvmm should exit 0 after the guest reboots; stderr:\n{}",
        vm.stderr()
    );
}

fn bzimage_args(cpus: &str) -> Vec<String> {
    [
        "--kernel",
        path(&guest_image("bzImage")),
        "--initrd",
        path(&guest_image("initramfs.cpio")),
        "--mem",
        "256",
        "--cpus",
        cpus,
    ]
    .map(String::from)
    .to_vec()
}

/// Debian's kernel and its initramfs with 512 MiB, then `extra`. The
/// command line is rvmm's default without `nomodule` (this guest loads its
/// virtio drivers as modules); the i8042 options keep the keyboard driver
/// from probing a keyboard that answers no commands, so it takes
/// Ctrl-Alt-Del at once.
fn debian_args(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--kernel",
        path(&guest_image("lab/vmlinuz")),
        "--initrd",
        path(&guest_image("lab/debian-initramfs.cpio")),
        "--mem",
        "512",
        "--cmdline",
        "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd",
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn user_space_shell_answers_typed_commands_on_one_cpu() {
    user_space("user_space_shell_answers_typed_commands_on_one_cpu", || {
        let args = bzimage_args("1");
        let mut vm = Console::start(&strs(&args), "user-one-cpu");
        let banner = boot_to_shell(&mut vm, "rvmm-guest: initramfs ready (6.1");
        assert!(banner.ends_with(", 1 CPU)"), "{banner}");
        // The shell echoes what is typed; only the shell can print 42.
        let (status, out) = vm.run("echo rvmm-sum-$((6*7))", step_limit());
        assert_eq!((status, out), (0, vec!["rvmm-sum-42".to_string()]));
        let (status, out) = vm.run("cat /proc/self/comm", step_limit());
        assert_eq!((status, out), (0, vec!["cat".to_string()]));
        assert_cpus(&mut vm, 1);
        reboot_and_expect_status_0(&mut vm);
        eprintln!("bzImage: shell banner, typed commands' output, nproc 1, reboot -f exits 0");
    });
}

#[test]
fn user_space_poweroff_and_reboot_as_typed_end_rvmm_with_0() {
    user_space(
        "user_space_poweroff_and_reboot_as_typed_end_rvmm_with_0",
        || {
            for command in ["poweroff", "reboot"] {
                let mut vm = Console::start(&strs(&bzimage_args("1")), "user-poweroff");
                boot_to_shell(&mut vm, "rvmm-guest: initramfs ready (6.1");
                // Busybox's poweroff and reboot signal init, which syncs.
                vm.send(&format!("{command}\n"));
                vm.expect(&format!("init: {command}: syncing disks"), step_limit());
                let status = vm.wait_exit(step_limit());
                assert_eq!(
                    status.code(),
                    Some(0),
                    "`{command}` should end rvmm with 0; stderr:\n{}",
                    vm.stderr()
                );
            }
            eprintln!("bzImage: `poweroff` and `reboot` typed at the shell each end rvmm with 0");
        },
    );
}

#[test]
fn user_space_debian_kernel_syncs_on_sigterm_and_powers_off_through_acpi() {
    user_space(
        "user_space_debian_kernel_syncs_on_sigterm_and_powers_off_through_acpi",
        || {
            let disk = random_disk("user-debian-stop.img", 1, 17);
            let args = debian_args(&["--disk", path(&disk)]);
            let args = strs(&args);
            let marker = b"rvmm-written-before-sigterm";
            let offset = 8 * 512;

            let mut vm = Console::start(&args, "user-debian-sigterm");
            boot_to_shell(&mut vm, "debian-guest: user space (");
            // A buffered write: in the guest's page cache, not yet on disk.
            let (status, out) = vm.run(
                &format!(
                    "printf {} | dd of=/dev/vda bs=512 seek=8 conv=notrunc 2>/dev/null",
                    std::str::from_utf8(marker).unwrap()
                ),
                step_limit(),
            );
            assert_eq!(status, 0, "{out:?}");
            let sent = std::time::Instant::now();
            send_sigterm(&vm);
            vm.expect("init: Ctrl-Alt-Del: syncing disks", step_limit());
            let status = vm.wait_exit(step_limit());
            let took = sent.elapsed();
            assert_eq!(
                status.code(),
                Some(0),
                "the guest should shut down in order on SIGTERM; stderr:\n{}",
                vm.stderr()
            );
            let on_disk = std::fs::read(&disk).unwrap();
            assert_eq!(
                &on_disk[offset..offset + marker.len()],
                marker,
                "what the guest wrote before SIGTERM is not on the disk"
            );

            let mut vm = Console::start(&args, "user-debian-poweroff");
            boot_to_shell(&mut vm, "debian-guest: user space (");
            vm.send("poweroff\n");
            vm.expect("init: poweroff: syncing disks", step_limit());
            // The kernel takes the ACPI path (sleep state S5), not a panic.
            vm.expect(
                "ACPI: PM: Preparing to enter system sleep state S5",
                step_limit(),
            );
            let status = vm.wait_exit(step_limit());
            assert_eq!(status.code(), Some(0), "stderr:\n{}", vm.stderr());
            assert!(
                !vm.seen.iter().any(|l| l.contains("Kernel panic")),
                "{}",
                vm.seen.join("\n")
            );
            eprintln!(
                "Debian's kernel: SIGTERM → Ctrl-Alt-Del → init synced and rebooted in {took:?}, the buffered write on disk; `poweroff` went through ACPI S5 and exited 0"
            );
        },
    );
}

#[test]
fn user_space_debian_kernel_talks_tcp_over_virtio_net() {
    user_space("user_space_debian_kernel_talks_tcp_over_virtio_net", || {
        use std::io::{BufRead, Write};
        use std::net::{TcpListener, TcpStream};

        common::tap::require_tun();
        let tap = common::tap::Tap::create("rvmmlab0");
        tap.set_ipv4([10, 0, 2, 1], 24);
        let listener = TcpListener::bind("10.0.2.1:5001").expect("listen on the tap's address");
        let net = format!("tap={},mac=06:00:0a:00:02:02", tap.name);
        let args = debian_args(&["--net", &net]);
        let args = strs(&args);
        let mut vm = Console::start(&args, "user-debian-net");
        boot_to_shell(&mut vm, "debian-guest: user space (");
        let (status, out) = vm.run(
            "ip addr add 10.0.2.2/24 dev eth0 && ip link set eth0 up && cat /sys/class/net/eth0/address",
            step_limit(),
        );
        assert_eq!((status, out), (0, vec!["06:00:0a:00:02:02".to_string()]));
        // Checksum and TCP segmentation offloads, both ways, negotiated
        // (one character per feature bit): CSUM 0, GUEST_CSUM 1,
        // GUEST_TSO4 7, HOST_TSO4 11.
        let (_, out) = vm.run("cat /sys/class/net/eth0/device/features", step_limit());
        let bits = out.first().cloned().unwrap_or_default();
        for bit in [0, 1, 7, 11] {
            assert_eq!(
                bits.as_bytes().get(bit),
                Some(&b'1'),
                "feature bit {bit} not negotiated: {bits:?}"
            );
        }
        let (status, out) = vm.run("ping -c 1 -W 10 10.0.2.1", step_limit());
        assert_eq!(status, 0, "ping: {out:?}");
        assert!(
            out.iter().any(|l| l.contains("1 packets received")),
            "{out:?}"
        );

        // Host to guest: the guest listens, the host connects and writes.
        let (status, _) = vm.run("(nc -l -p 5000 > /tmp/from-host &)", step_limit());
        assert_eq!(status, 0);
        let to_guest = format!("rvmm-tcp-host-to-guest-{}", std::process::id());
        let deadline = std::time::Instant::now() + step_limit();
        let mut stream = loop {
            match TcpStream::connect("10.0.2.2:5000") {
                Ok(stream) => break stream,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("connecting to the guest: {e}; again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot connect to the guest's nc: {e}"),
            }
        };
        writeln!(stream, "{to_guest}").unwrap();
        drop(stream);
        let (_, out) = vm.run(
            "for i in 1 2 3 4 5 6 7 8 9 10; do [ -s /tmp/from-host ] && break; sleep 1; done; cat /tmp/from-host",
            step_limit(),
        );
        assert_eq!(out, vec![to_guest.clone()], "what the guest's nc received");

        // Guest to host: the guest connects and writes, the host listens.
        let from_guest = format!("rvmm-tcp-guest-to-host-{}", std::process::id());
        vm.send(&format!("echo {from_guest} | nc 10.0.2.1 5001\n"));
        // Bounded: a guest that never connects fails the check, not the lab.
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + step_limit();
        let (connection, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no connection from the guest within {:?}; console:\n{}",
                        step_limit(),
                        vm.seen.join("\n")
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("accepting the guest's connection: {e}"),
            }
        };
        connection.set_nonblocking(false).unwrap();
        assert_eq!(peer.ip().to_string(), "10.0.2.2");
        connection.set_read_timeout(Some(step_limit())).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&connection)
            .read_line(&mut line)
            .expect("nothing from the guest");
        assert_eq!(line.trim_end(), from_guest);
        drop(connection);

        // 4 MiB each way: TSO segments and partial checksums, end to end.
        const BULK: usize = 4 * MIB;
        let blob = pseudo_random_bytes(BULK, 23);
        let blob_path = scratch("tcp-to-guest.bin");
        std::fs::write(&blob_path, &blob).unwrap();
        let (status, _) = vm.run("(nc -l -p 5002 > /tmp/big &)", step_limit());
        assert_eq!(status, 0);
        let deadline = std::time::Instant::now() + step_limit();
        let mut stream = loop {
            match TcpStream::connect("10.0.2.2:5002") {
                Ok(stream) => break stream,
                Err(e) if std::time::Instant::now() < deadline => {
                    eprintln!("connecting to the guest: {e}; again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot connect to the guest's nc: {e}"),
            }
        };
        stream.write_all(&blob).unwrap();
        drop(stream);
        let (_, out) = vm.run(
            &format!("for i in $(seq 1 60); do [ $(wc -c < /tmp/big) -ge {BULK} ] && break; sleep 1; done; sha256sum /tmp/big"),
            step_limit(),
        );
        assert_eq!(
            out.first().and_then(|l| l.split_whitespace().next()),
            Some(sha256(&blob_path).as_str()),
            "what the guest received over TCP differs: {out:?}"
        );
        let (status, out) = vm.run(
            &format!("head -c {BULK} /dev/urandom > /tmp/out && sha256sum /tmp/out"),
            step_limit(),
        );
        assert_eq!(status, 0, "{out:?}");
        let guest_sum = out[0].split_whitespace().next().unwrap().to_string();
        vm.send("nc 10.0.2.1 5001 < /tmp/out\n");
        let deadline = std::time::Instant::now() + step_limit();
        let connection = loop {
            match listener.accept() {
                Ok((connection, _)) => break connection,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no bulk connection from the guest"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("accepting the guest's connection: {e}"),
            }
        };
        connection.set_nonblocking(false).unwrap();
        connection.set_read_timeout(Some(step_limit())).unwrap();
        let mut received = vec![0u8; BULK];
        std::io::Read::read_exact(&mut &connection, &mut received).expect("the guest's 4 MiB");
        drop(connection);
        let received_path = scratch("tcp-from-guest.bin");
        std::fs::write(&received_path, &received).unwrap();
        assert_eq!(
            sha256(&received_path),
            guest_sum,
            "what L1 received over TCP differs"
        );
        reboot_and_expect_status_0(&mut vm);
        eprintln!("Debian's kernel on virtio-net: MAC as given, checksum and TSO offloads negotiated, ping, a line and 4 MiB each way over TCP with L1 through a tap");
    });
}

/// A host connection to guest vsock port `port` through rvmm's socket
/// `uds` (Firecracker's `CONNECT <port>`), retried while the guest refuses
/// (its listener may still be starting).
fn vsock_connect(uds: &Path, port: u32) -> std::io::BufReader<std::os::unix::net::UnixStream> {
    use std::io::{BufRead, Write};
    let deadline = std::time::Instant::now() + step_limit();
    loop {
        let mut stream =
            std::os::unix::net::UnixStream::connect(uds).expect("connect to rvmm's vsock socket");
        stream.set_read_timeout(Some(step_limit())).unwrap();
        writeln!(stream, "CONNECT {port}").unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut answer = String::new();
        let _ = reader.read_line(&mut answer);
        if answer.starts_with("OK ") {
            return reader;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest never accepted vsock port {port} (last answer {answer:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn user_space_debian_kernel_talks_over_vsock_both_ways() {
    user_space(
        "user_space_debian_kernel_talks_over_vsock_both_ways",
        || {
            use std::io::{BufRead, Read, Write};
            use std::os::unix::net::UnixListener;

            let uds = scratch("lab.vsock");
            let _ = std::fs::remove_file(&uds);
            let vsock = format!("cid=3,uds={}", path(&uds));
            let args = debian_args(&["--vsock", &vsock]);
            let mut vm = Console::start(&strs(&args), "user-debian-vsock");
            boot_to_shell(&mut vm, "debian-guest: user space (");
            let (status, out) = vm.run("ls /dev/vsock", step_limit());
            assert_eq!((status, out), (0, vec!["/dev/vsock".to_string()]));

            // Host to guest: 1 MiB into a guest listener, checked by the guest.
            let blob = pseudo_random_bytes(MIB, 21);
            let blob_path = scratch("vsock-to-guest.bin");
            std::fs::write(&blob_path, &blob).unwrap();
            let (status, _) = vm.run(
                "( (vsock listen 5000 > /tmp/from-host; echo $? > /tmp/listen-done) & )",
                step_limit(),
            );
            assert_eq!(status, 0);
            let mut to_guest = vsock_connect(&uds, 5000);
            to_guest.get_mut().write_all(&blob).unwrap();
            drop(to_guest);
            let (_, out) = vm.run(
            "for i in $(seq 1 60); do [ -s /tmp/listen-done ] && break; sleep 1; done; cat /tmp/listen-done; sha256sum /tmp/from-host",
            step_limit(),
        );
            assert_eq!(
                out.first().map(String::as_str),
                Some("0"),
                "vsock listen: {out:?}"
            );
            assert_eq!(
                out.get(1).and_then(|l| l.split_whitespace().next()),
                Some(sha256(&blob_path).as_str()),
                "what the guest received differs from what the host sent: {out:?}"
            );

            // Both ways on one host connection: the guest echoes a line.
            let (status, _) = vm.run("( vsock echo 5001 >/dev/null 2>&1 & )", step_limit());
            assert_eq!(status, 0);
            let mut echo = vsock_connect(&uds, 5001);
            let line = format!("rvmm-vsock-echo-{}", std::process::id());
            writeln!(echo.get_mut(), "{line}").unwrap();
            let mut back = String::new();
            echo.read_line(&mut back).expect("the guest's echo");
            assert_eq!(back.trim_end(), line);
            drop(echo);

            // Guest to host: 1 MiB to a host listener on UDS_5002, which answers.
            let mut listen_path = uds.as_os_str().to_owned();
            listen_path.push("_5002");
            let listener = UnixListener::bind(&listen_path).unwrap();
            listener.set_nonblocking(true).unwrap();
            let limit = step_limit();
            let host = std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + limit;
                let mut stream = loop {
                    match listener.accept() {
                        Ok((stream, _)) => break stream,
                        Err(_) if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => return Err(format!("no guest connection: {e}")),
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(limit)).unwrap();
                let mut got = Vec::new();
                stream
                    .read_to_end(&mut got)
                    .map_err(|e| format!("reading the guest's data: {e}"))?;
                stream.write_all(b"rvmm-vsock-host-reply\n").unwrap();
                Ok(got)
            });
            let (status, out) = vm.run(
                "head -c 1048576 /dev/urandom > /tmp/blob && sha256sum /tmp/blob",
                step_limit(),
            );
            assert_eq!(status, 0, "{out:?}");
            let guest_sum = out[0].split_whitespace().next().unwrap().to_string();
            let (status, out) = vm.run("vsock connect 2 5002 < /tmp/blob", step_limit());
            let received = host.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (status, out),
                (0, vec!["rvmm-vsock-host-reply".to_string()]),
                "the guest's connection should end with the host's answer"
            );
            let received_path = scratch("vsock-from-guest.bin");
            std::fs::write(&received_path, &received).unwrap();
            assert_eq!(received.len(), MIB);
            assert_eq!(
                sha256(&received_path),
                guest_sum,
                "what the host received differs from what the guest sent"
            );
            reboot_and_expect_status_0(&mut vm);
            eprintln!("Debian's kernel on virtio-vsock: 1 MiB host to guest, an echo both ways, 1 MiB guest to host and the host's answer, through Firecracker's CONNECT and PATH_PORT sockets");
        },
    );
}

#[test]
fn user_space_a_shell_snapshotted_and_restored_answers_and_keeps_its_disk() {
    user_space(
        "user_space_a_shell_snapshotted_and_restored_answers_and_keeps_its_disk",
        || {
            use common::api_client::request;
            let disk = random_disk("user-snapshot.img", 1, 19);
            let socket = scratch("user-snapshot.api");
            let _ = std::fs::remove_file(&socket);
            let sock = path(&socket).to_string();
            let mut vm = Console::start(&["--api-sock", &sock], "user-snapshot");
            assert!(
                common::api_client::wait_for_socket(
                    &socket,
                    step_limit(),
                    Duration::from_millis(20)
                ),
                "no API socket"
            );
            let put = |socket: &Path, what: &str, body: String| {
                let (status, reply) = request(socket, "PUT", what, &body);
                assert_eq!(status, 204, "PUT {what}: {reply}");
            };
            put(
                &socket,
                "/boot-source",
                format!(
                    r#"{{"kernel_image_path": "{}", "initrd_path": "{}", "boot_args": "{}"}}"#,
                    path(&guest_image("bzImage")),
                    path(&guest_image("initramfs.cpio")),
                    rvmm::config::DEFAULT_CMDLINE
                ),
            );
            put(
                &socket,
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 256}"#.into(),
            );
            put(
                &socket,
                "/drives/data",
                format!(
                    r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
                    path(&disk)
                ),
            );
            put(
                &socket,
                "/actions",
                r#"{"action_type": "InstanceStart"}"#.into(),
            );
            boot_to_shell(&mut vm, "rvmm-guest: initramfs ready (6.1");
            let (status, out) = vm.run(
                "printf rvmm-before-snapshot | dd of=/dev/vda bs=512 seek=8 conv=notrunc 2>/dev/null && sync",
                step_limit(),
            );
            assert_eq!(status, 0, "{out:?}");
            let (status, reply) = request(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#);
            assert_eq!(status, 204, "{reply}");
            let (state, memory) = (scratch("user-snapshot.state"), scratch("user-snapshot.mem"));
            put(
                &socket,
                "/snapshot/create",
                format!(
                    r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
                    path(&state),
                    path(&memory)
                ),
            );
            drop(vm);

            let restored_socket = scratch("user-snapshot-restored.api");
            let _ = std::fs::remove_file(&restored_socket);
            let sock = path(&restored_socket).to_string();
            let mut vm = Console::start(&["--api-sock", &sock], "user-snapshot-restored");
            assert!(
                common::api_client::wait_for_socket(
                    &restored_socket,
                    step_limit(),
                    Duration::from_millis(20)
                ),
                "no API socket"
            );
            put(
                &restored_socket,
                "/snapshot/load",
                format!(
                    r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_path": "{}", "backend_type": "File"}}, "resume_vm": true}}"#,
                    path(&state),
                    path(&memory)
                ),
            );
            // The shell that was paused answers: only it can print 42.
            let (status, out) = vm.run("echo rvmm-restored-$((6*7))", step_limit());
            assert_eq!((status, out), (0, vec!["rvmm-restored-42".to_string()]));
            let (status, out) = vm.run(
                "dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c 20; echo",
                step_limit(),
            );
            assert_eq!((status, out), (0, vec!["rvmm-before-snapshot".to_string()]));
            let (status, out) = vm.run(
                "printf rvmm-after-restore | dd of=/dev/vda bs=512 seek=16 conv=notrunc 2>/dev/null && sync",
                step_limit(),
            );
            assert_eq!(status, 0, "{out:?}");
            reboot_and_expect_status_0(&mut vm);
            let on_disk = std::fs::read(&disk).unwrap();
            assert_eq!(&on_disk[4096..4096 + 20], b"rvmm-before-snapshot");
            assert_eq!(&on_disk[8192..8192 + 18], b"rvmm-after-restore");
            eprintln!("bzImage shell: snapshotted paused through the API, restored in a new rvmm, answered a typed command, read its disk write from before, wrote another after; reboot exits 0");
        },
    );
}

#[test]
fn user_space_two_cpus_and_sigterm_shuts_down_in_order() {
    user_space(
        "user_space_two_cpus_and_sigterm_shuts_down_in_order",
        || {
            let disk = random_disk("user-sigterm.img", 1, 5);
            let mut args = bzimage_args("2");
            args.extend(["--disk".to_string(), path(&disk).to_string()]);
            let mut vm = Console::start(&strs(&args), "user-two-cpus");
            boot_to_shell(&mut vm, "rvmm-guest: initramfs ready (6.1");
            assert_cpus(&mut vm, 2);
            // A buffered write: in the guest's page cache, not yet on disk.
            let marker = "rvmm-written-before-sigterm";
            let (status, out) = vm.run(
                &format!("printf {marker} | dd of=/dev/vda bs=512 seek=8 conv=notrunc 2>/dev/null"),
                step_limit(),
            );
            assert_eq!(status, 0, "{out:?}");
            send_sigterm(&vm);
            // rvmm pressed Ctrl-Alt-Del; the guest's init synced and reset.
            vm.expect("init: Ctrl-Alt-Del: syncing disks", step_limit());
            let status = vm.wait_exit(step_limit());
            assert_eq!(status.code(), Some(0), "stderr:\n{}", vm.stderr());
            let on_disk = std::fs::read(&disk).unwrap();
            assert_eq!(
                &on_disk[4096..4096 + marker.len()],
                marker.as_bytes(),
                "what the guest wrote before SIGTERM is not on the disk"
            );
            assert_no_rvmm_left(&disk);
            eprintln!("bzImage: 2 CPUs brought up, nproc 2; SIGTERM → Ctrl-Alt-Del → init synced (the write is on disk) and rvmm exits 0, nothing left");
        },
    );
}

#[test]
fn user_space_four_cpus_with_a_disk_and_ctrl_a_x_on_a_terminal() {
    user_space(
        "user_space_four_cpus_with_a_disk_and_ctrl_a_x_on_a_terminal",
        || {
            let disk = random_disk("user-smp.img", 4, 7);
            let mut args = bzimage_args("4");
            args.extend(["--disk".to_string(), format!("{},ro", path(&disk))]);
            let mut vm = Console::start_on_terminal(&strs(&args), "user-four-cpus");
            let banner = boot_to_shell(&mut vm, "rvmm-guest: initramfs ready (6.1");
            assert!(banner.ends_with(", 4 CPU)"), "{banner}");
            assert_cpus(&mut vm, 4);
            assert_guest_checksum(&mut vm, "/dev/vda", &disk);
            // Ctrl-A x: the quit escape a person at the terminal uses.
            vm.send("\x01x");
            let status = vm.wait_exit(step_limit());
            assert_eq!(status.code(), Some(0), "stderr:\n{}", vm.stderr());
            assert_no_rvmm_left(&disk);
            eprintln!(
            "bzImage on a terminal: 4 CPUs, nproc 4, disk checksum; Ctrl-A x exits 0, nothing left"
        );
        },
    );
}

#[test]
fn user_space_disks_read_and_written_from_inside_the_guest() {
    user_space(
        "user_space_disks_read_and_written_from_inside_the_guest",
        || {
            let rw = partitioned_disk("user-partitioned.img");
            let ro = random_disk("user-readonly.img", 8, 9);
            let rw_before = std::fs::read(&rw).unwrap();
            let ro_before = std::fs::read(&ro).unwrap();
            let mut args = bzimage_args("1");
            args.extend(["--disk".to_string(), path(&rw).to_string()]);
            args.extend(["--disk".to_string(), format!("{},ro", path(&ro))]);
            let mut vm = Console::start(&strs(&args), "user-disks");
            boot_to_shell(&mut vm, "rvmm-guest: initramfs ready (6.1");

            // Partitions as the guest kernel found them: name and size in KiB.
            let (_, out) = vm.run("cat /proc/partitions", step_limit());
            let mut found: Vec<(String, String)> = out
                .iter()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() == 4 && f[3].starts_with("vd")).then(|| (f[3].into(), f[2].into()))
                })
                .collect();
            found.sort();
            let expected: Vec<(String, String)> = [
                ("vda", "65536"),
                ("vda1", "16384"),
                ("vda2", "32768"),
                ("vdb", "8192"),
            ]
            .map(|(a, b)| (a.into(), b.into()))
            .to_vec();
            assert_eq!(found, expected, "/proc/partitions: {out:?}");

            assert_guest_checksum(&mut vm, "/dev/vdb", &ro);
            let (_, out) = vm.run("cat /sys/block/vdb/ro", step_limit());
            assert_eq!(out, vec!["1".to_string()], "vdb should be read-only");

            // 4 KiB of a pattern into the first partition's second 4 KiB block,
            // flushed (fsync, then sync).
            let (status, out) = vm.run(
            "yes rvmm-lab-pattern | head -c 4096 | dd of=/dev/vda1 bs=4096 seek=1 conv=fsync && sync",
            step_limit(),
        );
            assert_eq!(status, 0, "writing vda1 failed: {out:?}");
            let (status, out) = vm.run(
                "dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync",
                step_limit(),
            );
            assert_ne!(status, 0, "writing the read-only disk succeeded: {out:?}");
            eprintln!("the guest's write to the read-only disk failed as it should: {out:?}");
            reboot_and_expect_status_0(&mut vm);

            let rw_after = std::fs::read(&rw).unwrap();
            let at = 2048 * SECTOR + 4096;
            let pattern: Vec<u8> = b"rvmm-lab-pattern\n"
                .iter()
                .copied()
                .cycle()
                .take(4096)
                .collect();
            assert!(
                rw_after[at..at + 4096] == pattern[..],
                "the pattern is not at byte {at} of the host file"
            );
            let changed: Vec<usize> = (0..rw_after.len())
                .filter(|&i| !(at..at + 4096).contains(&i) && rw_after[i] != rw_before[i])
                .take(5)
                .collect();
            assert!(
                changed.is_empty(),
                "bytes changed outside the write: {changed:?}..."
            );
            assert!(
                std::fs::read(&ro).unwrap() == ro_before,
                "the read-only disk changed"
            );
            eprintln!("disks: partitions, read-only checksum, a flushed write at the right offset and nowhere else, a refused read-only write");
        },
    );
}

#[test]
fn user_space_vmlinux_with_its_root_on_a_disk_reaches_the_shell() {
    user_space(
        "user_space_vmlinux_with_its_root_on_a_disk_reaches_the_shell",
        || {
            let rootfs = scratch("user-rootfs.ext4");
            std::fs::copy(guest_image("rootfs.ext4"), &rootfs).unwrap();
            let kernel = guest_image("vmlinux");
            let args = [
                "--kernel",
                path(&kernel),
                "--mem",
                "256",
                // As the README shows it: the default line plus the root.
                "--cmdline-append",
                "root=/dev/vda rw",
                "--disk",
                path(&rootfs),
            ];
            let mut vm = Console::start(&args, "user-rootfs");
            vm.expect("Run /sbin/init as init process", step_limit());
            boot_to_shell(&mut vm, "rvmm-guest: initramfs ready (6.1");
            // The kernel names a root it mounted itself /dev/root, so compare
            // device numbers: stat's is hex (major << 8 | minor for small ones).
            let (_, root) = vm.run("stat -c %D /", step_limit());
            let (_, vda) = vm.run("cat /sys/block/vda/dev", step_limit());
            let vda_hex = vda.first().and_then(|d| {
                let (major, minor) = d.split_once(':')?;
                Some(format!(
                    "{:x}",
                    major.parse::<u32>().ok()? << 8 | minor.parse::<u32>().ok()?
                ))
            });
            assert!(
                vda_hex.is_some() && root.first() == vda_hex.as_ref(),
                "/ is on device {root:?}, vda is {vda:?}"
            );
            let (_, mounts) = vm.run("cat /proc/mounts", step_limit());
            assert!(
                mounts.iter().any(|l| l.starts_with("/dev/root / ext4 rw")),
                "{mounts:?}"
            );
            let (status, _) = vm.run("echo rvmm-root-$((6*7)) > /marker && sync", step_limit());
            assert_eq!(status, 0);
            reboot_and_expect_status_0(&mut vm);
            let image = std::fs::read(&rootfs).unwrap();
            assert!(
                image.windows(13).any(|w| w == b"rvmm-root-42\n"),
                "the file the guest wrote to its root is not in the image"
            );
            eprintln!("vmlinux: root on /dev/vda (ext4, rw) up to the shell; a file written there is in the image");
        },
    );
}

#[test]
fn user_space_debian_kernel_reads_its_virtio_disk() {
    user_space("user_space_debian_kernel_reads_its_virtio_disk", || {
        let disk = random_disk("user-debian.img", 4, 13);
        let version = std::fs::read_to_string(guest_image("lab/VERSION")).unwrap();
        let (kernel, initrd) = (
            guest_image("lab/vmlinuz"),
            guest_image("lab/debian-initramfs.cpio"),
        );
        let args = [
            "--kernel",
            path(&kernel),
            "--initrd",
            path(&initrd),
            "--mem",
            "512",
            "--cpus",
            "2",
            // Without the default's `nomodule`: this guest loads its virtio
            // drivers as modules.
            "--cmdline",
            "console=ttyS0 reboot=k panic=1 pci=off",
            "--disk",
            &format!("{},ro", path(&disk)),
        ];
        let mut vm = Console::start(&args, "user-debian");
        let banner = boot_to_shell(&mut vm, "debian-guest: user space (");
        assert!(banner.contains("-amd64, 2 CPU)"), "{banner} ({version})");
        assert_cpus(&mut vm, 2);
        // Debian's kernel cannot take virtio-mmio devices from the command
        // line: it found this one in rvmm's ACPI tables (DSDT).
        let (_, devices) = vm.run("ls /sys/bus/acpi/devices", step_limit());
        assert!(
            devices.iter().any(|l| l.contains("LNRO0005:00")),
            "no virtio-mmio device in the guest's ACPI namespace: {devices:?}"
        );
        assert_guest_checksum(&mut vm, "/dev/vda", &disk);
        reboot_and_expect_status_0(&mut vm);
        eprintln!(
            "Debian's kernel ({}): user space, 2 CPUs, its virtio disk read whole",
            version.trim()
        );
    });
}

/// The harness's reading of a shell's output (`Console::run`) must not
/// trip over the guest kernel logging in the middle of a line, as the lab's
/// guests do when their clock watchdog fires (seen splitting the echo of a
/// command, which then counted as its output).
#[test]
fn kernel_log_lines_are_taken_out_of_the_shells_lines() {
    let seen: Vec<String> = [
        "echo rvmm-restored-$((6*7)); echo rvmm-done-$[    6.938043] clocksource: timekeeping watchdog on CPU0: Marking clocksource 'tsc' as unstable because the skew is too large:",
        "[    6.938050] clocksource:                       'kvm-clock' wd_nsec: 512000000",
        "((1))-$?",
        "rvmm-resto[    7.1] a second message",
        "red-42",
        "[    7.2] a line of its own",
        "an [8] in output is not a kernel log",
    ]
    .map(String::from)
    .to_vec();
    assert_eq!(
        common::without_kernel_logs(&seen),
        [
            "echo rvmm-restored-$((6*7)); echo rvmm-done-$((1))-$?",
            "rvmm-restored-42",
            "an [8] in output is not a kernel log",
        ]
    );
}
