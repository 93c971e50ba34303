//! Bad input from a user gets one clear line on stderr and a non-zero exit,
//! never a panic or a backtrace.

mod common;

use std::time::Duration;

use common::{guest, require_kvm, rvmm, scratch, Entry};

const LIMIT: Duration = Duration::from_secs(30);

/// Runs rvmm and checks it failed with exactly one error line containing
/// every one of `expected`.
fn assert_refused(args: &[&str], expected: &[&str]) {
    let run = rvmm(args, LIMIT);
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
fn unreadable_kernel() {
    let path = scratch("unreadable-kernel");
    std::fs::write(&path, b"\x7fELF").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    // root reads anything; then this is a corrupt kernel, which fails too.
    let run = rvmm(&["--kernel", path.to_str().unwrap()], LIMIT);
    assert_eq!(run.code(), Some(1));
    assert!(run.stderr.starts_with("rvmm: error: "), "{}", run.stderr);
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
fn a_truncated_elf_kernel() {
    require_kvm();
    let whole = std::fs::read(hello()).unwrap();
    let path = scratch("truncated.elf");
    std::fs::write(&path, &whole[..100]).unwrap();
    assert_refused(
        &["--kernel", path.to_str().unwrap()],
        &["is not a usable ELF kernel"],
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
    assert!(line.contains("--mem") || line.contains("memory"), "{line}");
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
