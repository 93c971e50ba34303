//! The sandbox: every rvmm thread runs under a seccomp filter while a guest
//! runs, and a system call outside a thread's list kills the process.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{guest, require_kvm, Console, Entry};

const LIMIT: Duration = Duration::from_secs(30);

/// (thread name, Seccomp: mode) of every thread of `pid` that rvmm created.
/// KVM adds a kernel worker (kvm-nx-lpage-recovery) to the process; it is
/// the host kernel's, not rvmm's code, and is left out.
fn thread_modes(pid: u32) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let name = std::fs::read_to_string(path.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        if name.starts_with("kvm-") {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .map(|m| m.trim().to_string())
            .unwrap_or_default();
        modes.push((name, mode));
    }
    modes.sort();
    modes
}

fn running_echo(extra: &[&str], name: &str) -> Console {
    require_kvm();
    let kernel = guest("echo", Entry::Linux64);
    let mut args = vec!["--kernel", kernel.to_str().unwrap(), "--cpus", "2"];
    args.extend_from_slice(extra);
    let mut vm = Console::start(&args, name);
    vm.expect("echo: ready", LIMIT);
    // The second vCPU thread may still be starting.
    std::thread::sleep(Duration::from_millis(200));
    vm
}

#[test]
fn every_thread_is_filtered_while_the_guest_runs() {
    let mut vm = running_echo(&[], "seccomp-on");
    let modes = thread_modes(vm.child.id());
    assert_eq!(
        modes.len(),
        4,
        "VMM thread, two vCPU threads and the console output thread expected: {modes:?}"
    );
    for (name, mode) in &modes {
        assert_eq!(mode, "2", "thread {name} is not under a seccomp filter");
    }
    // Filtered, the VM still works: input, output, clean exit.
    vm.send("still alive\n\x04");
    vm.expect("still alive", LIMIT);
    assert_eq!(vm.wait_exit(LIMIT).code(), Some(0), "{}", vm.stderr());
}

#[test]
fn no_seccomp_turns_the_filters_off_with_a_warning() {
    let mut vm = running_echo(&["--no-seccomp"], "seccomp-off");
    let modes = thread_modes(vm.child.id());
    assert!(modes.iter().all(|(_, mode)| mode == "0"), "{modes:?}");
    vm.send("\x04");
    assert_eq!(vm.wait_exit(LIMIT).code(), Some(0));
    assert!(vm.stderr().contains("--no-seccomp"), "{}", vm.stderr());
}

/// Run in a child process (see below): install a filter, then make a call
/// that no rvmm thread may make.
fn forbidden_call_in_child(kind: rvmm::seccomp::ThreadKind) -> ! {
    rvmm::seccomp::apply(kind).expect("filter installs");
    // SAFETY: socket(2) with constant arguments; the filter should kill us first.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    std::process::exit(0);
}

fn assert_killed_by_sigsys(test: &str, kind: &str) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env("RVMM_SECCOMP_CHILD", kind)
        .status()
        .unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{kind} filter: expected death by SIGSYS, got {status:?}"
    );
}

#[test]
fn a_forbidden_call_from_the_vmm_thread_kills_the_process() {
    if std::env::var("RVMM_SECCOMP_CHILD").as_deref() == Ok("vmm") {
        forbidden_call_in_child(rvmm::seccomp::ThreadKind::Vmm);
    }
    assert_killed_by_sigsys(
        "a_forbidden_call_from_the_vmm_thread_kills_the_process",
        "vmm",
    );
}

#[test]
fn a_forbidden_call_from_a_vcpu_thread_kills_the_process() {
    if std::env::var("RVMM_SECCOMP_CHILD").as_deref() == Ok("vcpu") {
        forbidden_call_in_child(rvmm::seccomp::ThreadKind::Vcpu);
    }
    assert_killed_by_sigsys(
        "a_forbidden_call_from_a_vcpu_thread_kills_the_process",
        "vcpu",
    );
}
