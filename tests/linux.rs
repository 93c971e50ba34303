//! Boots the real kernel and initramfs from guest-images/ with rvmm.
//!
//! How far depends on the host (see the project docs on KVM test hosts): on a
//! PVM-backed host a Linux guest runs up to "Run /init" and no further, so
//! the test stops there; on a host with hardware virtualization it goes on to
//! the initramfs banner, a command typed on the console, and `reboot -f`.

mod common;

use std::time::Duration;

use common::{guest_image, is_pvm_host, require_kvm, Console};

/// Guest kernel code is emulated on PVM hosts: minutes, not milliseconds.
const PVM_BOOT_LIMIT: Duration = Duration::from_secs(900);
const BOOT_LIMIT: Duration = Duration::from_secs(60);

fn boot(kernel_name: &str) {
    require_kvm();
    let kernel = guest_image(kernel_name);
    let initrd = guest_image("initramfs.cpio");
    let args = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--mem",
        "256",
    ];
    let mut vm = Console::start(&args, &format!("linux-{kernel_name}"));

    if is_pvm_host() {
        eprintln!("{kernel_name}: PVM-backed host: checking the boot up to 'Run /init' (user space cannot run here)");
        vm.expect("Linux version 6.1", PVM_BOOT_LIMIT);
        vm.expect("serial8250: ttyS0 at I/O 0x3f8 (irq = 4", PVM_BOOT_LIMIT);
        vm.expect("Run /init as init process", PVM_BOOT_LIMIT);
        assert!(
            vm.stderr().contains("PVM-backed"),
            "rvmm must log the flags it added on a PVM host:\n{}",
            vm.stderr()
        );
        let log = vm.seen.join("\n");
        assert!(
            log.contains("Command line: console=ttyS0 reboot=k"),
            "default command line not used:\n{log}"
        );
        assert!(
            !log.contains("i8042: Can't read CTR"),
            "i8042 probe failed:\n{log}"
        );
        eprintln!("{kernel_name}: reached 'Run /init as init process'");
    } else {
        eprintln!("{kernel_name}: hardware-virtualized host: booting to the shell and rebooting");
        vm.expect("rvmm-guest: initramfs ready", BOOT_LIMIT);
        vm.send("echo rvmm-sum-$((6*7))\n");
        vm.expect("rvmm-sum-42", BOOT_LIMIT);
        vm.send("reboot -f\n");
        let status = vm.wait_exit(BOOT_LIMIT);
        assert_eq!(
            status.code(),
            Some(0),
            "rvmm should exit 0 after the guest reboots; stderr:\n{}",
            vm.stderr()
        );
        eprintln!("{kernel_name}: shell answered and reboot ended rvmm with status 0");
    }
}

#[test]
fn bzimage_boots() {
    boot("bzImage");
}

#[test]
fn vmlinux_boots() {
    boot("vmlinux");
}
