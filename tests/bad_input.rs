//! Bad input from a user gets one clear line on stderr and a non-zero exit,
//! never a panic or a backtrace.

mod common;

use std::time::Duration;

use std::path::Path;
use std::process::Command;

use common::{
    guest, guest_image, require_kvm, run_command, rvmm, rvmm_binary, scratch, Entry, Run,
};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs rvmm and checks it failed with exactly one error line containing
/// every one of `expected`.
fn assert_refused(args: &[&str], expected: &[&str]) {
    check_refusal(&rvmm(args, LIMIT), args, expected);
}

/// Checks that `run` failed with exactly one error line containing every
/// one of `expected`.
fn check_refusal<S: std::fmt::Debug>(run: &Run, args: &[S], expected: &[&str]) {
    assert_eq!(
        run.code(),
        Some(1),
        "rvmm {args:?} should fail with status 1; stderr:\n{}",
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "no guest should have run: {}",
        run.stdout
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "rvmm {args:?} should print exactly one line, got:\n{}",
        run.stderr
    );
    let line = lines[0];
    assert!(line.starts_with("rvmm: error: "), "{line}");
    for e in expected {
        assert!(
            line.contains(e),
            "rvmm {args:?}: expected {e:?} in {line:?}"
        );
    }
    assert!(!run.stderr.contains("panicked") && !run.stderr.contains("backtrace"));
}

fn hello() -> String {
    guest("hello", Entry::Pvh).to_str().unwrap().to_string()
}

#[test]
fn bad_console_and_log_options() {
    let kernel = hello();
    assert_refused(
        &["--kernel", &kernel, "--serial", "pty"],
        &["--serial 'pty' is not known", "file=PATH", "socket=PATH"],
    );
    assert_refused(
        &[
            "--kernel",
            &kernel,
            "--serial",
            "socket=/nonexistent-dir/s.sock",
        ],
        &[
            "--serial socket=/nonexistent-dir/s.sock",
            "writable directory",
        ],
    );
    assert_refused(
        &[
            "--kernel",
            &kernel,
            "--serial",
            "file=/nonexistent-dir/out.txt",
        ],
        &["/nonexistent-dir/out.txt", "--serial file="],
    );
    assert_refused(
        &[
            "--kernel",
            &kernel,
            "--log-path",
            "/nonexistent-dir/rvmm.log",
        ],
        &["--log-path '/nonexistent-dir/rvmm.log'"],
    );
    assert_refused(
        &["--kernel", &kernel, "--log-level", "loud"],
        &["--log-level 'loud' is not a level"],
    );
    assert_refused(
        &["--kernel", &kernel, "--stop-timeout", "7200"],
        &["--stop-timeout 7200 is not a number of seconds from 0 to 3600"],
    );
}

#[test]
fn missing_kernel() {
    assert_refused(
        &["--kernel", "/nonexistent/bzImage"],
        &["cannot read kernel /nonexistent/bzImage", "No such file"],
    );
}

#[test]
fn kernel_is_a_directory() {
    let dir = scratch("a-directory");
    std::fs::create_dir_all(&dir).unwrap();
    assert_refused(
        &["--kernel", dir.to_str().unwrap()],
        &["cannot read kernel", "not a regular file"],
    );
}

#[test]
fn unreadable_kernel_initrd_or_disk() {
    require_kvm();
    // Root reads anything, so these run as nobody with a /dev/kvm nobody may use.
    let kvm = "mknod -m 666 /dev/kvm c 10 232";
    let (run, args) = hello_with_private_dev(&format!("{kvm} && chmod 000 /dev/guest"), true, &[]);
    check_refusal(
        &run,
        &args,
        &["cannot read kernel /dev/guest", "Permission denied"],
    );
    let (run, args) = hello_with_private_dev(
        &format!("{kvm} && echo data >/dev/initrd && chmod 000 /dev/initrd"),
        true,
        &["--initrd", "/dev/initrd"],
    );
    check_refusal(
        &run,
        &args,
        &["cannot read initrd /dev/initrd", "Permission denied"],
    );
    let (run, args) = hello_with_private_dev(
        &format!("{kvm} && truncate -s 4096 /dev/disk && chmod 000 /dev/disk"),
        true,
        &["--disk", "/dev/disk"],
    );
    check_refusal(&run, &args, &["/dev/disk", "Permission denied"]);
}

#[test]
fn a_file_that_is_no_kernel() {
    require_kvm();
    let path = scratch("notes.txt");
    std::fs::write(
        &path,
        "just some text, long enough to hold a boot header? no.\n".repeat(20),
    )
    .unwrap();
    assert_refused(
        &["--kernel", path.to_str().unwrap()],
        &["is not a Linux kernel"],
    );
}

#[test]
fn a_corrupt_bzimage() {
    require_kvm();
    // A boot header that claims protocol 2.15 but carries no kernel.
    let mut image = vec![0u8; 0x400];
    image[0x1f1] = 1; // setup_sects
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020f_u16.to_le_bytes());
    image[0x211] = 1; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x10_0000_u32.to_le_bytes());
    let path = scratch("corrupt-bzImage");
    std::fs::write(&path, &image).unwrap();
    assert_refused(
        &["--kernel", path.to_str().unwrap()],
        &["is not a usable bzImage"],
    );
}

#[test]
fn missing_initrd() {
    assert_refused(
        &["--kernel", &hello(), "--initrd", "/nonexistent/initrd"],
        &["cannot read initrd /nonexistent/initrd"],
    );
}

#[test]
fn initrd_too_large_for_memory() {
    require_kvm();
    let path = scratch("big-initrd");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(40 << 20).unwrap();
    assert_refused(
        &[
            "--kernel",
            &hello(),
            "--initrd",
            path.to_str().unwrap(),
            "--mem",
            "32",
        ],
        &["does not fit in guest memory", "raise --mem"],
    );
}

#[test]
fn zero_memory() {
    assert_refused(
        &["--kernel", &hello(), "--mem", "0"],
        &["--mem 0 MiB is too small", "at least 16 MiB"],
    );
}

#[test]
fn memory_too_small_to_boot() {
    assert_refused(&["--kernel", &hello(), "--mem", "8"], &["too small"]);
}

#[test]
fn memory_larger_than_the_host_can_map() {
    assert_refused(
        &["--kernel", &hello(), "--mem", "1099511627776"],
        &["does not fit", "physical address space"],
    );
}

#[test]
fn memory_beyond_what_kvm_or_mmap_accept() {
    require_kvm();
    // Within the address width of most hosts, but more than mmap or KVM take.
    let run = rvmm(&["--kernel", &hello(), "--mem", "60000000"], LIMIT);
    assert_eq!(run.code(), Some(1), "{}", run.stderr);
    let line = run.stderr.lines().last().unwrap_or_default();
    assert!(line.starts_with("rvmm: error: "), "{}", run.stderr);
    // Whether mmap or KVM refuses depends on the host; either way the line
    // says what to do.
    assert!(line.ends_with("; use a smaller --mem"), "{line}");
}

/// A malformed command line is a usage error: status 2 and clap's message
/// pointing at --help, as the README says (bad values are status 1 with one
/// line).
#[test]
fn a_malformed_command_line_exits_2_with_usage() {
    for args in [&["--kernel"][..], &["--no-such-flag"], &[]] {
        let run = rvmm(args, LIMIT);
        assert_eq!(run.code(), Some(2), "rvmm {args:?}: {}", run.stderr);
        assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
        assert!(run.stderr.contains("--help"), "{}", run.stderr);
        assert!(run.stdout.is_empty());
    }
}

#[test]
fn more_cpus_than_the_firmware_tables_hold() {
    require_kvm();
    assert_refused(
        &["--kernel", &hello(), "--cpus", "255"],
        &["--cpus 255 is more than rvmm's firmware tables can describe (254)"],
    );
}

#[test]
fn zero_cpus() {
    require_kvm();
    assert_refused(
        &["--kernel", &hello(), "--cpus", "0"],
        &["--cpus must be at least 1"],
    );
}

#[test]
fn a_kernel_too_large_for_memory() {
    require_kvm();
    let kernel = common::guest_image("vmlinux");
    assert_refused(
        &["--kernel", kernel.to_str().unwrap(), "--mem", "16"],
        &[
            "needs",
            "MiB of guest memory but --mem is 16 MiB; raise --mem",
        ],
    );
}

#[test]
fn a_command_line_longer_than_the_kernel_accepts() {
    require_kvm();
    let long = "x".repeat(3000);
    assert_refused(
        &["--kernel", &hello(), "--cmdline", &long],
        &["kernel command line", "at most 2047", "shorten --cmdline"],
    );
}

#[test]
fn a_command_line_with_control_characters() {
    require_kvm();
    assert_refused(
        &["--kernel", &hello(), "--cmdline", "a\tb"],
        &["kernel command line", "printable ASCII"],
    );
}

#[test]
fn a_truncated_bzimage_is_refused() {
    require_kvm();
    let whole = std::fs::read(guest_image("bzImage")).unwrap();
    let path = scratch("truncated-bzImage");
    for len in [600, 4096, whole.len() / 2, whole.len() - 1] {
        std::fs::write(&path, &whole[..len]).unwrap();
        assert_refused(
            &["--kernel", path.to_str().unwrap()],
            &["is not a usable bzImage", "truncated"],
        );
    }
}

#[test]
fn elf_kernels_cut_short_are_refused() {
    require_kvm();
    let whole = std::fs::read(guest("hello", Entry::Linux64)).unwrap();
    let path = scratch("cut-short.elf");
    for len in [64, 200, whole.len() / 2, whole.len() * 3 / 4] {
        std::fs::write(&path, &whole[..len]).unwrap();
        assert_refused(
            &["--kernel", path.to_str().unwrap()],
            &["is not a usable ELF kernel"],
        );
    }
}

/// The kernel fuzz corpus holds valid guests, corrupt headers and the inputs
/// that once crashed the loader. The named ones must boot or be refused as
/// pinned here; any other (new fuzz finds) boots or gets one clear line.
#[test]
fn every_kernel_in_the_fuzz_corpus_boots_or_is_refused() {
    require_kvm();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/kernel_image");
    let must_boot = ["hello-64", "hello-pvh"];
    let must_be_refused = [
        "bzimage-header",
        "regression-74eb067f5162",
        "regression-7b24a24d0937",
        "regression-d26cb3177732",
    ];
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let args = ["--kernel", path.to_str().unwrap()];
        let run = rvmm(&args, LIMIT);
        let booted = run.code() == Some(0);
        if booted {
            assert!(
                run.stdout.contains("Hello from the rvmm"),
                "{name}: {}",
                run.stdout
            );
        } else {
            check_refusal(&run, &args, &["kernel"]);
        }
        if must_boot.contains(&name.as_str()) {
            assert!(booted, "{name} must boot: {}", run.stderr);
        }
        if must_be_refused.contains(&name.as_str()) {
            assert!(!booted, "{name} must be refused");
        }
        seen.push(name);
    }
    for name in must_boot.iter().chain(&must_be_refused) {
        assert!(
            seen.iter().any(|s| s == name),
            "{name} is missing from {corpus:?}"
        );
    }
}

/// Runs the hello guest in a private mount namespace whose /dev is a fresh
/// tmpfs holding a copy of the guest and whatever `setup` (shell) puts
/// there, so a test can give rvmm any /dev/kvm without touching the host's.
/// `as_nobody` drops root just before rvmm starts.
fn hello_with_private_dev(setup: &str, as_nobody: bool, extra: &[&str]) -> (Run, Vec<String>) {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test builds a private /dev with unshare(1) and mknod: run the tests as root"
    );
    let drop_root = if as_nobody {
        "setpriv --reuid=65534 --regid=65534 --clear-groups"
    } else {
        ""
    };
    let script = format!(
        "mount -t tmpfs tmpfs /dev && cp \"$GUEST\" /dev/guest && chmod 644 /dev/guest \
         && {{ {setup}; }} && exec {drop_root} \"$@\""
    );
    let mut args = vec!["--kernel".to_string(), "/dev/guest".to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ])
        .arg(rvmm_binary())
        .args(&args)
        .env("GUEST", hello());
    (run_command(command, LIMIT), args)
}

#[test]
fn dev_kvm_missing_forbidden_or_not_kvm() {
    require_kvm();
    let cases: [(&str, bool, &[&str]); 4] = [
        (":", false, &["/dev/kvm does not exist", "modprobe"]),
        (
            "mknod -m 600 /dev/kvm c 10 232",
            true,
            &["no permission to open /dev/kvm", "kvm group"],
        ),
        (
            "mknod -m 666 /dev/kvm c 1 3",
            false,
            &["/dev/kvm is not the KVM device", "10:232"],
        ),
        ("mkdir /dev/kvm", false, &["cannot open /dev/kvm"]),
    ];
    for (setup, as_nobody, expected) in cases {
        let (run, args) = hello_with_private_dev(setup, as_nobody, &[]);
        check_refusal(&run, &args, expected);
    }
    // The same namespace with the real device boots, so the refusals above
    // come from /dev/kvm alone.
    let (run, _) = hello_with_private_dev("mknod -m 600 /dev/kvm c 10 232", false, &[]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(run.stdout.contains("Hello from the rvmm"), "{}", run.stdout);
}
