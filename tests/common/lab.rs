//! The hardware-KVM lab: a host with AMD-V, emulated by QEMU, for the Linux
//! tests that a PVM-backed host cannot run (see the project docs on KVM test
//! hosts, "A hardware-KVM host in a box").
//!
//! QEMU's TCG emulator implements SVM with nested paging, so Debian's kernel
//! booted under it (L1) loads `kvm_amd` and offers an ordinary `/dev/kvm`.
//! The lab puts this very test binary, the rvmm binary (both static) and the
//! guest images into L1's initramfs and runs the named tests there, where
//! they take their hardware-KVM path and boot their Linux guests (L2) under
//! rvmm. L1 frames every line the tests print as `rvmm-lab| …` on its serial
//! console; libtest's own `test NAME ... ok` lines and captured output say
//! how each test went. One L1 boot serves every test of the binary.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use super::{guest_image, guest_images_dir, rvmm_binary, scratch};

/// L1's RAM: enough for a 4 GiB guest that touches little of it.
const L1_MEM_MIB: u32 = 3072;
/// Everything in the lab is emulated: an L2 Linux boot takes 2-10 s, one
/// check 5-30 s and the whole set three or four minutes (on CI's machines
/// up to twice that). Every L1 boot of the checks together, retries
/// included, stays inside this, which keeps CI's whole run inside its time.
const LAB_BUDGET: Duration = Duration::from_secs(20 * 60);
/// One check in L1 is killed after this (its slowest takes 30 s there): a
/// guest that wedges inside L1's KVM, or a wait that cannot end, then costs
/// that check alone, not the checks after it.
const CHECK_LIMIT: Duration = Duration::from_secs(240);
/// L1 is taken for wedged when its console has been silent this long: the
/// job reports a killed check before this.
const SILENCE_LIMIT: Duration = Duration::from_secs(300);
/// L1 kernel messages that mean L1 itself is wedged (seen under the
/// emulator when the host is loaded): no test in it will finish.
const L1_WEDGED: &[&str] = &[
    "watchdog: BUG: soft lockup",
    "rcu_preempt detected stalls",
    "Kernel panic",
];
const FRAME: &str = "rvmm-lab| ";
const QEMU: &str = "qemu-system-x86_64";

/// What one L1 boot printed.
pub struct LabRun {
    /// The framed lines, unframed: the job's output inside L1.
    output: Vec<String>,
    /// Where L1's whole console log was saved.
    log: PathBuf,
    /// Why L1 stopped before its job was done, if it did.
    cut_short: Option<String>,
}

impl LabRun {
    /// What the job printed inside L1, line by line.
    pub fn output(&self) -> &[String] {
        &self.output
    }

    /// Where L1's whole console is.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// What the job prints, framed, when a check's process has ended: its
/// name and exit status (137: killed past CHECK_LIMIT). libtest's own
/// "test NAME ... ok" line is no guide: on L1's console its first part
/// goes missing now and then.
const ENDED: &str = "lab-job: ended ";

/// A file for L1 besides the lab's own: where it is here, and its path
/// inside L1 (relative to /).
pub type Extra = (PathBuf, String);

/// How one test went in one L1 boot.
struct Attempt {
    passed: bool,
    /// What it printed there, or why it did not run.
    report: String,
}

impl Attempt {
    fn of(run: &Result<LabRun, String>, test: &str) -> Attempt {
        let run = match run {
            Ok(run) => run,
            Err(reason) => {
                return Attempt {
                    passed: false,
                    report: format!("the hardware-KVM lab did not run: {reason}"),
                }
            }
        };
        let log = run.log.display();
        let ended = format!("{ENDED}{test} ");
        let status = run
            .output
            .iter()
            .find_map(|l| l.strip_prefix(&ended))
            .map(str::trim);
        let section = captured_output(&run.output, test);
        match status {
            Some("0") => Attempt {
                passed: true,
                report: section,
            },
            Some("137") => Attempt {
                passed: false,
                report: format!(
                    "killed after {} s: it did not end by itself; the end of the output:\n{}\nL1's whole console: {log}",
                    CHECK_LIMIT.as_secs(),
                    tail(&run.output, 40)
                ),
            },
            Some(status) => Attempt {
                passed: false,
                report: format!(
                    "failed (exit status {status}):\n{section}\nL1's whole console: {log}"
                ),
            },
            None => {
                let why = match &run.cut_short {
                    Some(why) => format!("L1 stopped before it ran or finished ({why})"),
                    None => String::from("it did not run"),
                };
                Attempt {
                    passed: false,
                    report: format!(
                        "{why}; the end of the output:\n{}\nL1's whole console: {log}",
                        tail(&run.output, 40)
                    ),
                }
            }
        }
    }
}

/// L1 boots a check may have: the first runs every check, each later one
/// those that have not passed yet, while LAB_BUDGET lasts.
const BOOTS: usize = 4;
const BOOT_NAMES: [&str; BOOTS] = ["first", "second", "third", "fourth"];

/// Every test's attempts. Everything in the lab is emulated, and now and
/// then one guest stalls, triple-faults early in its boot, or L1 itself
/// stops (seen about once in four lab runs here, on CI's machines up to
/// three times in one run); a check that fails in every boot is a failure.
static ATTEMPTS: OnceLock<HashMap<String, Vec<Attempt>>> = OnceLock::new();

fn run_all(tests: &[&str]) -> HashMap<String, Vec<Attempt>> {
    let mut attempts: HashMap<String, Vec<Attempt>> =
        tests.iter().map(|t| (t.to_string(), Vec::new())).collect();
    let deadline = Instant::now() + LAB_BUDGET;
    for which in BOOT_NAMES {
        let pending: Vec<&str> = tests
            .iter()
            .copied()
            .filter(|t| !attempts[*t].iter().any(|a| a.passed))
            .collect();
        let left = deadline.saturating_duration_since(Instant::now());
        // An L1 boot alone takes a minute or two.
        if pending.is_empty() || left < Duration::from_secs(180) {
            break;
        }
        let run = boot(&pending, which, left);
        for test in pending {
            let attempt = Attempt::of(&run, test);
            attempts.get_mut(test).expect("listed").push(attempt);
        }
    }
    attempts
}

/// Asserts that `test` passed inside the lab, booting the lab on first use
/// for all of `tests`, and passes on what the test printed there.
pub fn check(test: &str, tests: &[&str]) {
    let attempts = &ATTEMPTS.get_or_init(|| run_all(tests))[test];
    let last = attempts.last().expect("every test runs at least once");
    let earlier = &attempts[..attempts.len() - 1];
    if !last.passed {
        let reports: Vec<String> = attempts
            .iter()
            .zip(BOOT_NAMES)
            .map(|(a, which)| format!("{which} run: {}", a.report))
            .collect();
        panic!(
            "{test} failed in the hardware-KVM lab, in {} L1 boots.\n{}",
            attempts.len(),
            reports.join("\n")
        );
    }
    if earlier.is_empty() {
        eprintln!(
            "ran in the hardware-KVM lab (L1: Debian's kernel under QEMU TCG with AMD-V, kvm_amd); its output there:\n{}",
            last.report
        );
        return;
    }
    // Past libtest's capture, so that CI's log shows every retry.
    for (attempt, which) in earlier.iter().zip(BOOT_NAMES) {
        let _ = writeln!(
            std::io::stderr(),
            "lab: {test} FAILED on its {which} run in the lab and passed on a later one. That run: {}",
            attempt.report
        );
    }
    eprintln!(
        "passed in the hardware-KVM lab on run {}:\n{}",
        attempts.len(),
        last.report
    );
}

/// What libtest captured for `test` (`--show-output`), its panic message included.
fn captured_output(output: &[String], test: &str) -> String {
    let header = format!("---- {test} stdout ----");
    let Some(start) = output.iter().position(|l| *l == header) else {
        return String::from("(no captured output)");
    };
    output[start + 1..]
        .iter()
        .take_while(|l| !l.starts_with("---- ") && *l != "successes:" && *l != "failures:")
        .cloned()
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(lines: &[String], n: usize) -> String {
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Kills QEMU on every way out of [`boot`].
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `tests` in one L1 boot, each in a run of this binary of its own
/// that is killed past CHECK_LIMIT (and the rvmm processes it left with
/// it), so that one check that cannot end costs no other.
fn boot(tests: &[&str], which: &str, limit: Duration) -> Result<LabRun, String> {
    let seconds = CHECK_LIMIT.as_secs();
    let job = [
        format!("for test in {}; do", tests.join(" ")),
        format!("  timeout -s KILL {seconds} /lab/tests --exact --test-threads=1 --show-output \"$test\" </dev/null"),
        String::from("  status=$?"),
        // The empty line ends what libtest left unfinished ("test … ... ").
        String::from("  echo"),
        // What the killed check started goes with it.
        String::from("  if [ $status -eq 137 ]; then killall -9 rvmm; fi"),
        format!("  echo \"{ENDED}$test $status\""),
        String::from("done\n"),
    ]
    .join("\n");
    run(&job, &[], limit, which)
}

/// Boots L1 once and runs the shell commands `job` there (with the lab's
/// variables set, so that this binary, `/lab/tests` there, knows where it
/// is), with `extra` files beside the lab's own. L1 stops when the job
/// ends, when L1 wedges or falls silent, or after `limit`; what the job
/// printed until then comes back either way.
pub fn run(job: &str, extra: &[Extra], limit: Duration, which: &str) -> Result<LabRun, String> {
    let kernel = guest_image("lab/vmlinuz");
    let initrd = l1_initramfs(job, extra)?;
    let started = Instant::now();
    let mut qemu = Command::new(QEMU);
    qemu.args([
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "EPYC,+svm,+npt",
        "-smp",
        "2",
    ])
    .args(["-m", &L1_MEM_MIB.to_string()])
    .args([
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(&kernel)
    .arg("-initrd")
    .arg(&initrd)
    .args(["-append", "console=ttyS0 quiet panic=-1"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = qemu.spawn().map_err(|e| {
        format!("cannot start {QEMU} ({e}); `guest-images/build.sh` installs it (Debian's qemu-system-x86)")
    })?;
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let _qemu = Qemu(child);
    let lines = super::read_lines(stdout);
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });

    let log = scratch(&format!("lab-console-{which}.log"));
    // Written as it comes, so that a lab still running can be looked into.
    let mut log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let mut console = Vec::new();
    let mut output = Vec::new();
    let mut kvm_ready = false;
    let mut job_exit = None;
    let mut wedged = false;
    let mut cut_short = None;
    let deadline = started + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left.min(SILENCE_LIMIT)) {
            Ok(line) => {
                if let Some(framed) = line.strip_prefix(FRAME) {
                    output.push(framed.to_string());
                } else if line.starts_with("rvmm-lab: kvm ready") {
                    eprintln!("lab: {line} after {:.1} s", started.elapsed().as_secs_f64());
                    kvm_ready = true;
                } else if let Some(status) = line.strip_prefix("rvmm-lab: job exited ") {
                    job_exit = Some(status.trim().to_string());
                } else if L1_WEDGED.iter().any(|m| line.contains(m)) {
                    wedged = true;
                }
                let _ = writeln!(log_file, "{line}");
                console.push(line);
                if job_exit.is_some() || wedged {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let why = if Instant::now() >= deadline {
                    format!("the lab was stopped after {} s, its time", limit.as_secs())
                } else {
                    format!(
                        "the lab was stopped after {} s: its console had been silent for {} s",
                        started.elapsed().as_secs(),
                        SILENCE_LIMIT.as_secs()
                    )
                };
                let _ = writeln!(log_file, "({why})");
                console.push(format!("({why})"));
                cut_short = Some(why);
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                cut_short = Some(String::from("QEMU ended"));
                break;
            }
        }
    }
    drop(_qemu);
    let qemu_errors = errors.join().unwrap_or_default();
    eprintln!(
        "lab: L1 ran {:.0} s; its whole console is in {}",
        started.elapsed().as_secs_f64(),
        log.display()
    );
    if !kvm_ready {
        return Err(format!(
            "L1 never offered /dev/kvm. QEMU said:\n{qemu_errors}\nthe end of L1's console:\n{}",
            tail(&console, 40)
        ));
    }
    if job_exit.is_none() {
        if wedged {
            cut_short = Some(String::from("L1 itself stopped making progress"));
        }
        let why = cut_short.get_or_insert_with(|| String::from("L1 stopped"));
        eprintln!(
            "lab: {why} before its job was done. QEMU said:\n{qemu_errors}\nthe end of L1's console:\n{}",
            tail(&console, 30)
        );
    }
    // What finished before L1 stopped keeps its results.
    Ok(LabRun {
        output,
        log,
        cut_short,
    })
}

/// L1's initramfs: the cached `lab/l1.cpio` (busybox, its init, the KVM
/// modules) followed by a second archive with this run's binaries, the guest
/// images, `extra` and `job`. The kernel unpacks both.
fn l1_initramfs(job: &str, extra: &[Extra]) -> Result<PathBuf, String> {
    let stage = scratch("lab-stage");
    let _ = std::fs::remove_dir_all(&stage);
    let images = stage.join("lab/images");
    std::fs::create_dir_all(images.join("lab")).map_err(|e| e.to_string())?;
    // This very binary, read through /proc/self/exe so that it is the one
    // running even if cargo has rebuilt it on disk since.
    let this_test_binary = scratch("lab-this-test-binary");
    std::fs::copy("/proc/self/exe", &this_test_binary).map_err(|e| e.to_string())?;
    strip_into(Path::new(&rvmm_binary()), &stage.join("lab/rvmm"))?;
    strip_into(&this_test_binary, &stage.join("lab/tests"))?;
    for name in [
        "bzImage",
        "vmlinux",
        "initramfs.cpio",
        "rootfs.ext4",
        "lab/vmlinuz",
        "lab/debian-initramfs.cpio",
        "lab/VERSION",
    ] {
        let from = guest_image(name);
        std::os::unix::fs::symlink(&from, images.join(name)).map_err(|e| e.to_string())?;
    }
    for (from, to) in extra {
        let to = stage.join(to);
        std::fs::create_dir_all(to.parent().expect("a file path")).map_err(|e| e.to_string())?;
        std::os::unix::fs::symlink(from, &to).map_err(|e| e.to_string())?;
    }
    let job = format!(
        // RUST_LOG=info: a failure report then shows why rvmm stopped.
        "export {}=/lab/rvmm {}=/lab/images {}=/tmp RUST_LOG=info PATH=/usr/sbin:/usr/bin:/sbin:/bin\n{job}",
        super::LAB_BIN_VAR,
        super::LAB_IMAGES_VAR,
        super::LAB_SCRATCH_VAR,
    );
    std::fs::write(stage.join("lab/job"), job).map_err(|e| e.to_string())?;

    let archive = scratch("lab-job.cpio");
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | LC_ALL=C sort | cpio -o -H newc -L --owner=0:0 --quiet > \"$0\"")
        .arg(&archive)
        .current_dir(&stage)
        .status()
        .map_err(|e| format!("cannot run cpio ({e}); `guest-images/build.sh` installs it"))?;
    if !cpio.success() {
        return Err(format!("cpio failed ({cpio}) packing {}", stage.display()));
    }
    let initrd = scratch("lab-l1.cpio");
    let mut bytes = std::fs::read(guest_images_dir().join("lab/l1.cpio")).map_err(|e| {
        format!("lab/l1.cpio is missing ({e}): build the guest images with `guest-images/build.sh`")
    })?;
    bytes.extend(std::fs::read(&archive).map_err(|e| e.to_string())?);
    std::fs::write(&initrd, bytes).map_err(|e| e.to_string())?;
    Ok(initrd)
}

/// Copies a binary without its debug information, which L1 has no use for
/// and would have to unpack from its initramfs under emulation.
fn strip_into(from: &Path, to: &Path) -> Result<(), String> {
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| format!("cannot run objcopy ({e}); install binutils"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "objcopy --strip-debug {} failed ({status})",
            from.display()
        ))
    }
}
