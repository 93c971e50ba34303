//! The sandbox: every rvmm thread runs under a seccomp filter while a guest
//! runs, and a system call outside a thread's list kills the process.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{guest, require_kvm, thread_modes, Console, Entry};

const LIMIT: Duration = Duration::from_secs(30);

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
    // The PIT's setup thread (one ioctl) may not have ended yet.
    let lasting = modes.iter().filter(|(name, _)| name != "rvmm-pit").count();
    assert_eq!(
        lasting, 3,
        "VMM thread and two vCPU threads expected: {modes:?}"
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

/// The system call a child process makes after installing a filter.
#[derive(Clone, Copy, Debug)]
enum Call {
    /// socket(AF_INET): no rvmm thread may open a network socket.
    Socket,
    /// socket(AF_UNIX): vsock's connections for the guest, the event loop's alone.
    UnixSocket,
    /// pwrite64(2) to /dev/null: disk I/O, the event loop's alone.
    Pwrite,
    /// ioctl(TCGETS) on stdin: terminal settings, the event loop's alone.
    TerminalIoctl,
    /// ioctl(KVM_GET_SREGS) (on /dev/null: only the request number is
    /// filtered): what a vCPU reads of itself for a snapshot.
    VcpuStateIoctl,
}

vmm_sys_util::ioctl_ior_nr!(
    KVM_GET_SREGS,
    kvm_bindings::KVMIO,
    0x83,
    kvm_bindings::kvm_sregs
);

/// Runs in a child process (see below): installs the filter for `kind`,
/// makes `call`, and exits 0 if it was allowed.
fn call_in_child(kind: rvmm::seccomp::ThreadKind, call: Call) -> ! {
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .unwrap();
    rvmm::seccomp::apply(kind).expect("filter installs");
    let fd = std::os::fd::AsRawFd::as_raw_fd(&null);
    // SAFETY: each call gets valid arguments (a live descriptor, a local
    // buffer); the filter decides whether it runs.
    unsafe {
        match call {
            Call::Socket => drop(libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0)),
            Call::UnixSocket => drop(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0)),
            Call::Pwrite => drop(libc::pwrite(fd, b"x".as_ptr().cast(), 1, 0)),
            Call::TerminalIoctl => {
                let mut t: libc::termios = std::mem::zeroed();
                libc::ioctl(0, libc::TCGETS, &mut t);
            }
            Call::VcpuStateIoctl => {
                let mut sregs = kvm_bindings::kvm_sregs::default();
                libc::ioctl(fd, KVM_GET_SREGS(), &mut sregs);
            }
        }
    }
    std::process::exit(0);
}

/// Runs this test binary again as a child that makes `call` under `kind`'s
/// filter, and returns how the child ended.
fn child_status(kind: rvmm::seccomp::ThreadKind, call: Call) -> std::process::ExitStatus {
    let key = format!("{kind:?}/{call:?}");
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "each_thread_kind_is_killed_for_what_it_may_not_do",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("RVMM_SECCOMP_CHILD", &key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
}

#[test]
fn each_thread_kind_is_killed_for_what_it_may_not_do() {
    use rvmm::seccomp::Serves;
    use rvmm::seccomp::ThreadKind::{Api, PitSetup, Vcpu, Vmm};
    // The event loop of a VM with every kind of device and the API, and of
    // one with its console alone; a vCPU thread of each.
    let (full, bare) = (Vmm(Serves::ALL), Vmm(Serves::default()));
    let (vcpu, bare_vcpu) = (Vcpu { snapshots: true }, Vcpu { snapshots: false });
    let cases = [
        (full, Call::Socket, false),
        (full, Call::UnixSocket, true),
        (full, Call::Pwrite, true),
        (full, Call::TerminalIoctl, true),
        // Without a vsock device no Unix socket, without disks no disk I/O.
        (bare, Call::UnixSocket, false),
        (bare, Call::Pwrite, false),
        (bare, Call::TerminalIoctl, true),
        (vcpu, Call::UnixSocket, false),
        (vcpu, Call::Pwrite, false),
        (vcpu, Call::TerminalIoctl, false),
        // A vCPU reads its own state only where the API may take snapshots.
        (vcpu, Call::VcpuStateIoctl, true),
        (bare_vcpu, Call::VcpuStateIoctl, false),
        // The API thread serves its clients, opens the files it is named
        // and writes snapshots; it makes no socket and no ioctl.
        (Api, Call::UnixSocket, false),
        (Api, Call::TerminalIoctl, false),
        (Api, Call::Pwrite, true),
        // The PIT's setup thread makes its one KVM ioctl and closes its fd.
        (PitSetup, Call::TerminalIoctl, false),
        (PitSetup, Call::Pwrite, false),
        (PitSetup, Call::UnixSocket, false),
    ];
    if let Ok(key) = std::env::var("RVMM_SECCOMP_CHILD") {
        // This is the child: make the one call it was started for.
        let (kind, call, _) = cases
            .into_iter()
            .find(|(kind, call, _)| format!("{kind:?}/{call:?}") == key)
            .expect("a known case");
        call_in_child(kind, call);
    }
    for (kind, call, allowed) in cases {
        let status = child_status(kind, call);
        if allowed {
            assert_eq!(
                status.code(),
                Some(0),
                "{kind:?} must allow {call:?}: {status:?}"
            );
        } else {
            assert_eq!(
                status.signal(),
                Some(libc::SIGSYS),
                "{kind:?} must kill the process on {call:?}: {status:?}"
            );
        }
    }
}

/// A panic on a filtered vCPU thread must not turn into SIGSYS: the panic
/// hook puts the terminal back only on the thread that may (the VMM's).
#[test]
fn a_panic_on_a_filtered_vcpu_thread_is_not_killed_by_the_terminal_hook() {
    if std::env::var("RVMM_SECCOMP_CHILD").as_deref() == Ok("vcpu-panic") {
        let (_master, slave) = common::open_pty();
        let slave = std::os::fd::AsRawFd::as_raw_fd(&slave);
        // SAFETY: makes the pty this process's stdin, as a person's terminal.
        let stdin = unsafe { libc::dup2(slave, 0) };
        assert_eq!(stdin, 0);
        let terminal = rvmm::console::RawTerminal::enter();
        assert!(terminal.is_active());
        let vcpu = std::thread::spawn(|| {
            rvmm::seccomp::apply(rvmm::seccomp::ThreadKind::Vcpu { snapshots: true }).unwrap();
            panic!("a bug on a vCPU thread");
        });
        assert!(vcpu.join().is_err());
        drop(terminal);
        std::process::exit(0);
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_panic_on_a_filtered_vcpu_thread_is_not_killed_by_the_terminal_hook",
            "--exact",
            "--nocapture",
        ])
        .env("RVMM_SECCOMP_CHILD", "vcpu-panic")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
}
