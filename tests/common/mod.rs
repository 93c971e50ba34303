//! Shared helpers for rvmm's integration tests: building the purpose-built
//! test guests with the system C toolchain, running the rvmm binary, and
//! finding the guest images.
#![allow(dead_code)]

pub mod api_client;
pub mod lab;
pub mod tap;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where a test binary copied into the hardware-KVM lab finds what cargo
/// would have told it at build time (see `lab.rs`); unset everywhere else.
pub const LAB_BIN_VAR: &str = "RVMM_TEST_BIN";
pub const LAB_IMAGES_VAR: &str = "RVMM_TEST_IMAGES";
pub const LAB_SCRATCH_VAR: &str = "RVMM_TEST_SCRATCH";

/// The rvmm binary under test.
pub fn rvmm_binary() -> OsString {
    std::env::var_os(LAB_BIN_VAR).unwrap_or_else(|| env!("CARGO_BIN_EXE_rvmm").into())
}

/// True inside the hardware-KVM lab, where everything runs under an emulator.
pub fn in_lab() -> bool {
    std::env::var_os(LAB_BIN_VAR).is_some()
}

/// Fails (never skips) when this host cannot run VMs, saying how to fix it.
pub fn require_kvm() {
    let kvm = Path::new("/dev/kvm");
    assert!(
        kvm.exists(),
        "/dev/kvm is missing: these tests boot real VMs. Run them on a host with KVM \
         (enable virtualization, `modprobe kvm_intel` or `kvm_amd`)."
    );
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(kvm)
            .is_ok(),
        "/dev/kvm cannot be opened: run the tests as root or add your user to the kvm group."
    );
}

/// The kind of KVM host, which decides how far a Linux guest can get: the
/// test asks rvmm's own check, so the two can never disagree.
#[allow(unused_imports)]
pub use rvmm::host::is_pvm_host;

/// A test guest built from `tests/guests/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// 32-bit protected-mode entry through the PVH ELF note.
    Pvh,
    /// 64-bit Linux boot protocol entry at the ELF entry point.
    Linux64,
}

/// Builds (once per test binary and source) the guest `name` for `entry`:
/// `hello` and `halt` are lone assembly files, the others are C on top of `entry.S`.
pub fn guest(name: &str, entry: Entry) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&out_dir).unwrap();
    let suffix = match entry {
        Entry::Pvh => "pvh",
        Entry::Linux64 => "64",
    };
    let out = out_dir.join(format!("{name}-{suffix}-{}", std::process::id()));
    if out.exists() {
        return out;
    }
    let sources: Vec<PathBuf> = if name == "hello" || name == "halt" {
        vec![src.join(format!("{name}.S"))]
    } else {
        vec![src.join("entry.S"), src.join(format!("{name}.c"))]
    };
    let tmp =
        out.with_extension(format!("tmp{:?}", std::thread::current().id()).replace(['(', ')'], ""));
    let mut cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args([
        "-ffreestanding",
        "-fno-pic",
        "-no-pie",
        "-nostdlib",
        "-static",
        "-mno-red-zone",
        "-mgeneral-regs-only",
        "-fno-stack-protector",
        "-fno-asynchronous-unwind-tables",
        "-O2",
        "-Wall",
        "-Werror",
        "-Wl,--build-id=none",
        "-Wl,-z,max-page-size=4096",
        "-Wl,-z,noexecstack",
        "-Wl,--no-warn-rwx-segments",
    ])
    .arg(format!("-Wl,-T,{}", src.join("guest.ld").display()))
    .arg("-o")
    .arg(&tmp)
    .args(&sources);
    match entry {
        Entry::Pvh => cc.args(["-DPVH", "-Wl,-e,pvh_start"]),
        Entry::Linux64 => cc.arg("-Wl,-e,linux64_start"),
    };
    let result = cc.output().unwrap_or_else(|e| {
        panic!("cannot run the C compiler to build test guest {name} ({e}); install gcc (apt-get install build-essential)")
    });
    assert!(
        result.status.success(),
        "building test guest {name} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// What one rvmm run produced.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident memory of the process, in KiB (getrusage's maxrss).
    pub max_rss_kib: u64,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

fn finish((output, max_rss_kib): (Output, u64)) -> Run {
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        max_rss_kib,
    }
}

/// Runs rvmm with `args` and `stdin` as input, killing it after `limit`.
pub fn rvmm_with_input(args: &[&str], stdin: &[u8], limit: Duration) -> Run {
    let mut child = Command::new(rvmm_binary())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start the rvmm binary");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&data);
        // Keep stdin open until the child is done, as a terminal would.
        std::thread::sleep(Duration::from_secs(3600));
    });
    let output = wait_with_limit(child, limit);
    finish(output)
}

/// Runs rvmm with `args` and an empty stdin, killing it after `limit`.
pub fn rvmm(args: &[&str], limit: Duration) -> Run {
    rvmm_env(args, &[], limit)
}

/// As [`rvmm`], with extra environment variables.
pub fn rvmm_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    let mut command = Command::new(rvmm_binary());
    command.args(args).envs(env.iter().copied());
    run_command(command, limit)
}

/// Runs `command` (rvmm, or a wrapper that ends in rvmm) with an empty
/// stdin, killing it after `limit`.
pub fn run_command(mut command: Command, limit: Duration) -> Run {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    finish(wait_with_limit(child, limit))
}

fn wait_with_limit(mut child: Child, limit: Duration) -> (Output, u64) {
    let pid = child.id();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx.recv_timeout(limit).is_err() {
            // Still running: the test fails below with whatever it printed.
            // SAFETY-free: plain kill(2) through the command line tool.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let mut out = Vec::new();
    let _ = stdout.read_to_end(&mut out);
    // wait4 rather than Child::wait, for the child's peak memory.
    let mut raw_status = 0;
    // SAFETY: zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with pointers to live locals.
    let reaped = unsafe { libc::wait4(pid as i32, &mut raw_status, 0, &mut usage) };
    assert_eq!(
        reaped,
        pid as i32,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    let _ = done_tx.send(());
    let output = Output {
        status: std::os::unix::process::ExitStatusExt::from_raw(raw_status),
        stdout: out,
        stderr: err_reader.join().unwrap(),
    };
    (output, usage.ru_maxrss as u64)
}

/// A running rvmm whose console is read line by line.
pub struct Console {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
    stderr_path: PathBuf,
    input: Box<dyn Write + Send>,
    /// Commands sent through [`Console::run`], numbering their end markers.
    commands: u32,
}

impl Console {
    /// Starts rvmm with `args`, its console on pipes; its stderr goes to a
    /// scratch file.
    pub fn start(args: &[&str], name: &str) -> Console {
        let mut command = Command::new(rvmm_binary());
        command.args(args);
        Self::start_command(command, name)
    }

    /// Starts `command` (any VMM with its console on stdio), its console on
    /// pipes; its stderr goes to a scratch file.
    pub fn start_command(mut command: Command, name: &str) -> Console {
        let stderr = std::fs::File::create(Self::stderr_path(name)).unwrap();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let input = Box::new(child.stdin.take().unwrap());
        Self::attach(child, stdout, input, name)
    }

    /// Starts rvmm with `args` on a new pseudo-terminal, as a person at a
    /// shell would: rvmm puts it in raw mode and honours Ctrl-A x.
    pub fn start_on_terminal(args: &[&str], name: &str) -> Console {
        let (master, slave) = open_pty();
        let child = Self::command(args, name)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave))
            .spawn()
            .expect("cannot start the rvmm binary");
        let reader = std::fs::File::from(master.try_clone().unwrap());
        Self::attach(child, reader, Box::new(std::fs::File::from(master)), name)
    }

    /// Where the run called `name` keeps rvmm's stderr.
    fn stderr_path(name: &str) -> PathBuf {
        scratch(&format!("{name}.stderr"))
    }

    fn command(args: &[&str], name: &str) -> Command {
        let stderr = std::fs::File::create(Self::stderr_path(name)).unwrap();
        let mut command = Command::new(rvmm_binary());
        command.args(args).stderr(stderr);
        command
    }

    fn attach(
        child: Child,
        output: impl Read + Send + 'static,
        input: Box<dyn Write + Send>,
        name: &str,
    ) -> Console {
        let lines = read_lines(output);
        Console {
            child,
            lines,
            seen: Vec::new(),
            stderr_path: Self::stderr_path(name),
            input,
            commands: 0,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Types `text` on the guest console.
    pub fn send(&mut self, text: &str) {
        self.input.write_all(text.as_bytes()).unwrap();
        self.input.flush().unwrap();
    }

    /// Runs `command` in the guest's shell and returns its exit status and
    /// the lines it printed. The shell echoes what is typed, so the end
    /// marker is typed as `$((N))` and only its expansion, printed by the
    /// shell after the command has run, counts.
    pub fn run(&mut self, command: &str, limit: Duration) -> (i32, Vec<String>) {
        self.commands += 1;
        let n = self.commands;
        let typed = format!("rvmm-done-$(({n}))-");
        let printed = format!("rvmm-done-{n}-");
        self.send(&format!("{command}; echo {typed}$?\n"));
        let first = self.seen.len();
        let end = self.expect(&printed, limit);
        let status = end
            .split(&printed)
            .nth(1)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no exit status in {end:?}"));
        // The guest kernel may log to the same console meanwhile, even in
        // the middle of the shell's echo or of a line of output.
        let lines = without_kernel_logs(&self.seen[first..self.seen.len() - 1]);
        let echo = lines.iter().rposition(|l| l.contains(&typed));
        let output = lines[echo.map_or(0, |i| i + 1)..].to_vec();
        (status, output)
    }

    /// Waits for a console line containing `marker`; panics with everything
    /// seen so far if it does not come within `limit`.
    pub fn expect(&mut self, marker: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // A guest that prints without end must not hold this past `limit`.
            let next = if left.is_zero() {
                Err(mpsc::RecvTimeoutError::Timeout)
            } else {
                self.lines.recv_timeout(left)
            };
            match next {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(marker) {
                        return line;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let status = self.child.wait();
                    panic!(
                        "no console line with {marker:?} ({e:?}, rvmm {status:?}); console:\n{}\nstderr:\n{}",
                        self.seen.join("\n"),
                        self.stderr()
                    );
                }
            }
        }
    }

    /// Waits for rvmm to exit by itself within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Everything rvmm wrote before it exited, up to the pipe's end.
                let drained = Instant::now() + Duration::from_secs(2);
                while let Ok(line) = self
                    .lines
                    .recv_timeout(drained.saturating_duration_since(Instant::now()))
                {
                    self.seen.push(line);
                }
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "rvmm did not exit within {limit:?}; console:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr()
                );
            }
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new pseudo-terminal: (master, slave).
pub fn open_pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills in two new descriptors; the pointers are valid.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc, 0,
        "cannot open a pseudo-terminal (is /dev/pts mounted?)"
    );
    // SAFETY: both descriptors are fresh and owned by the caller from now on.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

/// Reads `output` line by line on a thread of its own; the lines arrive on
/// the channel without their line ends (a terminal's \r\n included) until
/// `output` ends.
pub fn read_lines(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(output).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// `lines` without the guest kernel's log lines, and with a line the
/// kernel's log broke in two ("echo do[    6.93] clocksource: ...", its
/// own lines, then "ne") put back together.
pub fn without_kernel_logs(lines: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut broken: Option<String> = None;
    for line in lines {
        if is_kernel_log_line(line) {
            continue;
        }
        let line = broken.take().unwrap_or_default() + line;
        match (1..line.len())
            .filter(|&i| line.is_char_boundary(i))
            .find(|&i| is_kernel_log_line(&line[i..]))
        {
            Some(at) => broken = Some(line[..at].to_string()),
            None => kept.push(line),
        }
    }
    kept.extend(broken);
    kept
}

/// A Linux printk line on the console: "[    4.910481] ...".
fn is_kernel_log_line(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
        .is_some_and(|(stamp, _)| {
            let stamp = stamp.trim_start();
            // printk's stamp is seconds.microseconds: "[12] x" is not one.
            stamp.contains('.') && stamp.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

/// The guest images built by `guest-images/build.sh`, or a failure saying how to get them.
pub fn guest_image(name: &str) -> PathBuf {
    let path = guest_images_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the guest images first with `guest-images/build.sh` \
         (the README's test command does this)",
        path.display()
    );
    path
}

/// Where `guest-images/build.sh` puts its outputs.
pub fn guest_images_dir() -> PathBuf {
    std::env::var_os(LAB_IMAGES_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images/out"))
}

/// (thread name, Seccomp: mode) of every thread of `pid` that rvmm created.
pub fn thread_modes(pid: u32) -> Vec<(String, String)> {
    thread_status(pid, "Seccomp")
}

/// (thread name, value of `field` in its status) of every thread of `pid`
/// that rvmm created, sorted. KVM adds a kernel worker
/// (kvm-nx-lpage-recovery) to the process; it is the host kernel's, not
/// rvmm's code, and is left out.
pub fn thread_status(pid: u32, field: &str) -> Vec<(String, String)> {
    let mut values = Vec::new();
    // A process that has just exited has no threads left to list.
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return values;
    };
    for task in tasks.flatten() {
        let path = task.path();
        // A thread that is exiting can no longer be read: it is gone.
        let Ok(name) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let name = name.trim().to_string();
        if name.starts_with("kvm-") {
            continue;
        }
        let value = proc_field(&path.join("status").to_string_lossy(), field).unwrap_or_default();
        values.push((name, value));
    }
    values.sort();
    values
}

/// The value of a `Field:   value` line in a /proc file, trimmed.
pub fn proc_field(path: &str, field: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| Some(l.strip_prefix(field)?.strip_prefix(':')?.trim().to_string()))
}

/// The value of a `Field:   123 kB` line in a /proc file, in KiB.
pub fn proc_kib(path: &str, field: &str) -> Option<u64> {
    proc_field(path, field)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The bytes the blk test guest writes to sectors 2..10 of a disk when it
/// adds `offset` (disk index plus `blktest.tag`) to its pattern.
pub fn blk_write_pattern(offset: u32) -> Vec<u8> {
    (0..4096u32)
        .map(|k| (k.wrapping_mul(31) + 7 + offset) as u8)
        .collect()
}

/// FNV-1a, 64-bit: what the inspect guest computes over the initrd.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A scratch file path unique to this test process.
pub fn scratch(name: &str) -> PathBuf {
    let base = std::env::var_os(LAB_SCRATCH_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    let dir = base.join(format!("scratch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// FNV-1a over 64-bit little-endian words: what the block test guest
/// computes over a disk (whose size is a multiple of 8).
pub fn fnv1a64_words(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).fold(0xcbf2_9ce4_8422_2325, |h, w| {
        (h ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Deterministic bytes that look random (xorshift64), seeded by `seed`.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
