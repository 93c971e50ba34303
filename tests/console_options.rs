//! Where the guest console and rvmm's log go: --serial, --log-path and
//! --log-level, each checked on what a real guest printed.

mod common;

use std::time::Duration;

use common::{guest, require_kvm, rvmm, rvmm_env, scratch, Entry};

const LIMIT: Duration = Duration::from_secs(30);
const HELLO: &str = "Hello from the rvmm 64-bit test guest\n";

fn hello() -> String {
    guest("hello", Entry::Linux64).to_str().unwrap().to_string()
}

#[test]
fn serial_to_a_file_holds_the_guest_output_and_stdout_nothing() {
    require_kvm();
    let out = scratch("serial-file.txt");
    // Longer than what the guest prints: a file not truncated would show it.
    std::fs::write(
        &out,
        "old contents, longer than the guest's line, to be replaced\n",
    )
    .unwrap();
    let serial = format!("file={}", out.display());
    let run = rvmm(&["--kernel", &hello(), "--serial", &serial], LIMIT);
    assert_eq!(run.code(), Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(run.stdout, "");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), HELLO);
}

#[test]
fn serial_off_discards_the_guest_output() {
    require_kvm();
    let run = rvmm(&["--kernel", &hello(), "--serial", "off"], LIMIT);
    assert_eq!(run.code(), Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(run.stdout, "");
    // The same run with the default prints the guest's line.
    let run = rvmm(&["--kernel", &hello(), "--serial", "stdio"], LIMIT);
    assert_eq!(run.stdout, HELLO);
}

#[test]
fn log_path_and_log_level_take_the_log_off_stderr() {
    require_kvm();
    let log = scratch("rvmm.log");
    let _ = std::fs::remove_file(&log);
    let args = [
        "--kernel",
        &hello(),
        "--log-path",
        log.to_str().unwrap(),
        "--log-level",
        "info",
    ];
    // --log-level wins over RUST_LOG.
    let run = rvmm_env(&args, &[("RUST_LOG", "off")], LIMIT);
    assert_eq!(run.code(), Some(0), "stderr:\n{}", run.stderr);
    assert_eq!(run.stdout, HELLO);
    assert_eq!(run.stderr, "", "the log should be in the file only");
    let written = std::fs::read_to_string(&log).unwrap();
    // What rvmm logs at info level when the guest resets it.
    assert!(
        written.contains("INFO") && written.contains("guest requested a reset"),
        "{written}"
    );
    // A second run appends.
    let run = rvmm(&args, LIMIT);
    assert_eq!(run.code(), Some(0));
    let again = std::fs::read_to_string(&log).unwrap();
    assert!(again.starts_with(&written) && again.len() > written.len());

    let quiet = scratch("rvmm-quiet.log");
    let _ = std::fs::remove_file(&quiet);
    let run = rvmm(
        &[
            "--kernel",
            &hello(),
            "--log-path",
            quiet.to_str().unwrap(),
            "--log-level",
            "Error",
        ],
        LIMIT,
    );
    assert_eq!(run.code(), Some(0));
    assert_eq!(std::fs::read_to_string(&quiet).unwrap(), "");
}
