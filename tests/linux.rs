//! Boots the real kernel from guest-images/ with rvmm.
//!
//! How far depends on the host (see the project docs on KVM test hosts): on a
//! PVM-backed host a Linux guest runs up to "Run /init" and no further, so
//! the tests stop there, after the kernel has probed its virtio disks and
//! mounted its root file system; on a host with hardware virtualization they
//! go on to the shell, type commands, check disks from inside the guest, and
//! reboot.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{guest_image, is_pvm_host, pseudo_random_bytes, require_kvm, scratch, Console};

/// Guest kernel code is emulated on PVM hosts: minutes, not milliseconds.
const PVM_BOOT_LIMIT: Duration = Duration::from_secs(1200);
const BOOT_LIMIT: Duration = Duration::from_secs(60);
const MIB: usize = 1 << 20;

/// A 64 MiB disk with an MBR and two Linux partitions.
fn partitioned_disk() -> std::path::PathBuf {
    let mut image = vec![0u8; 64 * MIB];
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
    let path = scratch("partitioned.img");
    std::fs::write(&path, image).unwrap();
    path
}

fn sha256(path: &std::path::Path) -> String {
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

#[test]
fn bzimage_boots_with_initramfs_and_two_disks() {
    require_kvm();
    let kernel = guest_image("bzImage");
    let initrd = guest_image("initramfs.cpio");
    let disk_a = partitioned_disk();
    let disk_b = scratch("plain.img");
    std::fs::write(&disk_b, pseudo_random_bytes(8 * MIB, 3)).unwrap();
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--mem",
        "256",
        "--disk",
        disk_a.to_str().unwrap(),
        "--disk",
        disk_b.to_str().unwrap(),
    ];
    let mut vm = Console::start(&args, "linux-bzimage");

    let limit = if is_pvm_host() {
        PVM_BOOT_LIMIT
    } else {
        BOOT_LIMIT
    };
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
        eprintln!("PVM-backed host: bzImage probed both disks and reached 'Run /init' (user space cannot run here)");
        return;
    }
    vm.expect("rvmm-guest: initramfs ready", BOOT_LIMIT);
    vm.send("echo rvmm-sum-$((6*7))\n");
    vm.expect("rvmm-sum-42", BOOT_LIMIT);
    // The guest checksums a disk and writes to the other; the host checks both.
    let expected = sha256(&disk_b);
    vm.send("sha256sum /dev/vdb\n");
    let line = vm.expect("/dev/vdb", BOOT_LIMIT);
    assert!(
        line.starts_with(&expected),
        "guest saw {line:?}, host has {expected}"
    );
    vm.send(
        "echo rvmm-was-here | dd of=/dev/vda bs=512 seek=4 conv=sync,fsync && echo write-done\n",
    );
    vm.expect("write-done", BOOT_LIMIT);
    vm.send("reboot -f\n");
    let status = vm.wait_exit(BOOT_LIMIT);
    assert_eq!(
        status.code(),
        Some(0),
        "rvmm should exit 0 after the guest reboots; stderr:\n{}",
        vm.stderr()
    );
    let written = std::fs::read(&disk_a).unwrap();
    assert_eq!(&written[4 * 512..4 * 512 + 14], b"rvmm-was-here\n");
    eprintln!("hardware-virtualized host: shell, disk checksum, disk write and reboot all checked");
}

#[test]
fn vmlinux_boots_with_its_root_file_system_on_a_disk() {
    require_kvm();
    let kernel = guest_image("vmlinux");
    // A private copy: the guest mounts it read-write.
    let rootfs = scratch("rootfs.ext4");
    std::fs::copy(guest_image("rootfs.ext4"), &rootfs).unwrap();
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--mem",
        "256",
        "--cmdline",
        "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw",
        "--disk",
        rootfs.to_str().unwrap(),
    ];
    let mut vm = Console::start(&args, "linux-vmlinux");
    let limit = if is_pvm_host() {
        PVM_BOOT_LIMIT
    } else {
        BOOT_LIMIT
    };
    vm.expect("Linux version 6.1", limit);
    vm.expect("[vda] 65536 512-byte logical blocks", limit);
    vm.expect("VFS: Mounted root (ext4 filesystem)", limit);
    vm.expect("Run /sbin/init as init process", limit);
    if is_pvm_host() {
        eprintln!(
            "PVM-backed host: vmlinux (PVH entry) mounted ext4 root from vda and reached init"
        );
        return;
    }
    vm.expect("rvmm-guest: initramfs ready", BOOT_LIMIT);
    vm.send("mount | grep ' / ' && sync && reboot -f\n");
    vm.expect("/dev/vda on / type ext4", BOOT_LIMIT);
    assert_eq!(vm.wait_exit(BOOT_LIMIT).code(), Some(0), "{}", vm.stderr());
    eprintln!("hardware-virtualized host: vmlinux booted to a shell with its root on /dev/vda");
}

#[test]
fn four_vcpus_and_4_gib_are_listed_or_brought_up() {
    require_kvm();
    let kernel = guest_image("vmlinux");
    let initrd = guest_image("initramfs.cpio");
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
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
    let limit = if is_pvm_host() {
        PVM_BOOT_LIMIT
    } else {
        BOOT_LIMIT
    };
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
        eprintln!("PVM-backed host: the kernel lists 4 CPUs from the MP table and the full 4 GiB (APs cannot start here)");
        return;
    }
    vm.expect("smp: Brought up 1 node, 4 CPUs", BOOT_LIMIT);
    vm.expect("rvmm-guest: initramfs ready", BOOT_LIMIT);
    vm.send("echo cpus=$(nproc)\n");
    vm.expect("cpus=4", BOOT_LIMIT);
    vm.send("reboot -f\n");
    assert_eq!(vm.wait_exit(BOOT_LIMIT).code(), Some(0), "{}", vm.stderr());
    eprintln!("hardware-virtualized host: 4 CPUs brought up, nproc says 4");
}
