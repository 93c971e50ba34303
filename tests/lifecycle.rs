//! How rvmm stops: host signals end the VM with 128 + signal, the terminal
//! is put back as it was, and vCPU threads are named and joined.

mod common;

use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    guest, open_pty, proc_field, require_kvm, rvmm_binary, thread_status, Console, Entry,
};

const LIMIT: Duration = Duration::from_secs(30);

fn send_signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) on the child we started and still own.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

fn stop_with(signal: i32) -> std::process::ExitStatus {
    require_kvm();
    let kernel = guest("echo", Entry::Linux64);
    let mut vm = Console::start(
        &["--kernel", kernel.to_str().unwrap()],
        &format!("signal-{signal}"),
    );
    vm.expect("echo: ready", LIMIT);
    send_signal(vm.child.id(), signal);
    vm.wait_exit(LIMIT)
}

#[test]
fn sigterm_stops_the_vm_with_status_143() {
    assert_eq!(stop_with(libc::SIGTERM).code(), Some(143));
}

/// Starts the `shutdown` guest in `mode` ('o' obeys Ctrl-Alt-Del by powering
/// off, 'i' ignores it), sends SIGTERM once it listens, and returns rvmm's
/// exit status, how long it took after the signal, the guest's output and
/// rvmm's log.
fn sigterm_to_a_listening_guest(
    mode: &str,
    stop_timeout: &str,
) -> (std::process::ExitStatus, Duration, String, String) {
    require_kvm();
    let kernel = guest("shutdown", Entry::Linux64);
    let mut vm = Console::start(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--stop-timeout",
            stop_timeout,
        ],
        &format!("shutdown-{mode}"),
    );
    vm.expect("shutdown: keyboard on, mode?", LIMIT);
    vm.send(mode);
    vm.expect("shutdown: ", LIMIT);
    let sent = std::time::Instant::now();
    send_signal(vm.child.id(), libc::SIGTERM);
    let status = vm.wait_exit(LIMIT);
    let took = sent.elapsed();
    (status, took, vm.seen.join("\n"), vm.stderr())
}

#[test]
fn sigterm_presses_ctrl_alt_del_and_a_guest_that_powers_off_exits_0() {
    let (status, _, output, log) = sigterm_to_a_listening_guest("o", "20");
    assert_eq!(
        status.code(),
        Some(0),
        "guest output:\n{output}\nrvmm log:\n{log}"
    );
    // The guest saw the key press (set 1: Ctrl, Alt, Delete) and powered
    // off through the ACPI register; rvmm stopped there.
    let codes: Vec<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("shutdown: scan code 0x"))
        .map(|hex| hex.trim_start_matches('0'))
        .collect();
    assert_eq!(codes[..4], ["1d", "38", "e0", "53"], "{output}");
    // Powered off means no further guest instruction: not one byte of the
    // line the guest prints next may come out.
    assert_eq!(
        output.lines().rfind(|l| !l.is_empty()),
        Some("shutdown: powering off"),
        "{output}"
    );
}

#[test]
fn a_guest_that_ignores_ctrl_alt_del_is_stopped_after_the_timeout() {
    let (status, took, output, log) = sigterm_to_a_listening_guest("i", "1.5");
    assert_eq!(
        status.code(),
        Some(143),
        "guest output:\n{output}\nrvmm log:\n{log}"
    );
    assert!(output.contains("shutdown: Ctrl-Alt-Del"), "{output}");
    assert!(
        took >= Duration::from_millis(1500),
        "stopped {took:?} after SIGTERM, before its --stop-timeout of 1.5 s"
    );
    assert!(log.contains("did not shut down within 1.5 s"), "{log}");
}

#[test]
fn sigint_stops_the_vm_with_status_130() {
    assert_eq!(stop_with(libc::SIGINT).code(), Some(130));
}

#[test]
fn vcpu_threads_are_named_and_counted() {
    require_kvm();
    let kernel = guest("echo", Entry::Linux64);
    let mut vm = Console::start(
        &["--kernel", kernel.to_str().unwrap(), "--cpus", "3"],
        "threads",
    );
    vm.expect("echo: ready", LIMIT);
    let task_dir = format!("/proc/{}/task", vm.child.id());
    let vcpu_threads = || {
        let mut names: Vec<String> = std::fs::read_dir(&task_dir)
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .filter(|n| n.starts_with("rvmm-vcpu"))
            .collect();
        names.sort();
        names
    };
    // vCPU 0 may print before the last thread is up.
    let deadline = std::time::Instant::now() + LIMIT;
    while vcpu_threads().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        vcpu_threads(),
        ["rvmm-vcpu-0", "rvmm-vcpu-1", "rvmm-vcpu-2"]
    );
    vm.send("\x04");
    assert_eq!(vm.wait_exit(LIMIT).code(), Some(0));
}

/// The CPUs rvmm's thread `thread` of `pid` may run on.
fn cpus_allowed(pid: u32, thread: &str) -> Option<String> {
    thread_status(pid, "Cpus_allowed_list")
        .into_iter()
        .find_map(|(name, cpus)| (name == thread).then_some(cpus))
}

/// vCPU 0 is held on one host CPU only while KVM sets the PIT up (see
/// src/pit_setup.rs); afterwards it may run wherever rvmm may.
#[test]
fn vcpu_0_runs_on_every_cpu_again_once_the_pit_is_set_up() {
    require_kvm();
    let kernel = guest("echo", Entry::Linux64);
    let mut vm = Console::start(&["--kernel", kernel.to_str().unwrap()], "affinity");
    vm.expect("echo: ready", LIMIT);
    let pid = vm.child.id();
    let process =
        proc_field(&format!("/proc/{pid}/status"), "Cpus_allowed_list").expect("rvmm's CPUs");
    // The setup takes two grace periods (up to ~30 ms on PVM hosts).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut vcpu0 = cpus_allowed(pid, "rvmm-vcpu-0");
    while vcpu0.as_ref() != Some(&process) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        vcpu0 = cpus_allowed(pid, "rvmm-vcpu-0");
    }
    assert_eq!(
        vcpu0.as_ref(),
        Some(&process),
        "vCPU 0's CPUs against rvmm's"
    );
    vm.send("\x04");
    assert_eq!(vm.wait_exit(LIMIT).code(), Some(0));
}

/// Terminal flags that raw mode changes.
fn local_flags(fd: i32) -> (libc::tcflag_t, libc::tcflag_t) {
    // SAFETY: termios is plain data, filled in by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open terminal and `t` is writable.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    (t.c_lflag, t.c_iflag)
}

#[test]
fn the_terminal_is_restored_after_a_signal() {
    require_kvm();
    let kernel = guest("echo", Entry::Linux64);
    let (master_fd, slave_fd) = open_pty();
    let slave = slave_fd.as_raw_fd();
    let before = local_flags(slave);
    assert_ne!(
        before.0 & libc::ICANON,
        0,
        "a new pty starts in canonical mode"
    );

    let mut child = Command::new(rvmm_binary())
        .args(["--kernel", kernel.to_str().unwrap()])
        .stdin(Stdio::from(slave_fd.try_clone().unwrap()))
        .stdout(Stdio::from(slave_fd.try_clone().unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until rvmm has put the terminal in raw mode.
    let deadline = std::time::Instant::now() + LIMIT;
    while local_flags(slave).0 & libc::ICANON != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "rvmm never switched the terminal to raw mode"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    send_signal(child.id(), libc::SIGTERM);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert_eq!(
        local_flags(slave),
        before,
        "terminal flags differ after rvmm exited"
    );
    drop(master_fd);
}

#[test]
fn a_stalled_stdout_neither_blocks_the_guest_nor_the_stop() {
    require_kvm();
    let kernel = guest("chatter", Entry::Linux64);
    // stdout is a pipe that nobody reads: it fills within a second.
    let mut child = Command::new(rvmm_binary())
        .args(["--kernel", kernel.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let unread_stdout = child.stdout.take().unwrap();
    // Stop only once the pipe is full, however slowly a loaded host lets
    // the guest print, and output waits in rvmm behind it.
    wait_until_full(&unread_stdout, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(200));
    let sent = std::time::Instant::now();
    send_signal(child.id(), libc::SIGTERM);
    let deadline = sent + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rvmm did not stop within 5 s of SIGTERM while its stdout was stalled");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = sent.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    drop(unread_stdout);
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(
        stderr.contains("stdout is stalled"),
        "rvmm should say it left output unwritten:\n{stderr}"
    );
    // The writer waits at most half a second for a stalled stdout.
    assert!(took < Duration::from_secs(2), "stopping took {took:?}");
    eprintln!("stalled stdout: SIGTERM ended rvmm in {took:?}");
}

/// Waits until `pipe` holds as much as it can take; panics after `limit`.
fn wait_until_full(pipe: &impl AsRawFd, limit: Duration) {
    let fd = pipe.as_raw_fd();
    // SAFETY: F_GETPIPE_SZ only reads the size of the open pipe `fd`.
    let capacity = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    assert!(capacity > 0, "cannot read the pipe's size");
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int, which `queued` is.
        assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) }, 0);
        if queued >= capacity {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the guest's output filled {queued} of the pipe's {capacity} bytes in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `rvmm … > log 2>&1`: guest output and rvmm's log share one file, and
/// neither may overwrite the other.
#[test]
fn stdout_and_stderr_into_one_file_keep_both() {
    require_kvm();
    let kernel = guest("hello", Entry::Pvh);
    let log = common::scratch("both.log");
    let file = std::fs::File::create(&log).unwrap();
    let status = Command::new(rvmm_binary())
        .args(["--kernel", kernel.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l == "Hello from the rvmm PVH test guest"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.contains("kernel command line:")),
        "{text}"
    );
    // Every line is whole: the guest's, or a log line with its timestamp.
    for line in text.lines() {
        assert!(
            line.starts_with("Hello from the rvmm") || line.starts_with("[20"),
            "a line was overwritten: {line:?} in\n{text}"
        );
    }
}
