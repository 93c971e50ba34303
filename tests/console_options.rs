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

/// Connects to rvmm's console socket, waiting for it to appear.
fn connect(path: &std::path::Path) -> std::os::unix::net::UnixStream {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(stream) => {
                stream.set_read_timeout(Some(LIMIT)).unwrap();
                return stream;
            }
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect to {}: {e}", path.display()),
        }
    }
}

/// Reads from `stream` until what was read contains `marker`.
fn read_until(stream: &mut std::os::unix::net::UnixStream, marker: &str) -> String {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains(marker) {
        let n = stream.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "waiting for {marker:?}: {e}; got {:?}",
                String::from_utf8_lossy(&got)
            )
        });
        assert!(
            n > 0,
            "socket closed before {marker:?}; got {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn serial_socket_serves_one_client_at_a_time_with_the_output_it_missed() {
    use std::io::{Read, Write};
    require_kvm();
    let socket = scratch("serial.sock");
    let _ = std::fs::remove_file(&socket);
    let kernel = guest("echo", Entry::Linux64);
    let serial = format!("socket={}", socket.display());
    let mut vm = common::Console::start(
        &["--kernel", kernel.to_str().unwrap(), "--serial", &serial],
        "serial-socket",
    );
    // The banner came before anyone connected: the client still gets it.
    let mut first = connect(&socket);
    read_until(&mut first, "echo: ready");
    // A second client is turned away while the first is connected.
    let mut second = connect(&socket);
    let mut byte = [0u8; 1];
    assert_eq!(
        second.read(&mut byte).unwrap(),
        0,
        "second client not closed"
    );
    first.write_all(b"typed-by-the-first-client").unwrap();
    read_until(&mut first, "typed-by-the-first-client");
    drop(first);
    // When the first leaves, the next one types to the guest.
    let mut third = connect(&socket);
    third.write_all(b"and-by-the-third\x04").unwrap();
    read_until(&mut third, "echo: bye");
    let status = vm.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", vm.stderr());
    assert!(
        vm.seen.is_empty(),
        "stdout got console output: {:?}",
        vm.seen
    );
    // The socket file stays; a new rvmm replaces it (it is stale).
    let run = rvmm(&["--kernel", &hello(), "--serial", &serial], LIMIT);
    assert_eq!(run.code(), Some(0), "stderr:\n{}", run.stderr);
}
