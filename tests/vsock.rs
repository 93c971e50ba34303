//! virtio-vsock in Firecracker's hybrid form, with a polled test guest
//! (`guests/vsock.c`): a guest connection reaches the host program that
//! listens on `UDS_PORT`; a host program reaches a guest port through
//! `CONNECT <port>` on the VM's socket; lines and bulk data both ways within
//! each side's credit; refusals, closes and resets seen by the other side;
//! a guest that vanishes mid-stream leaves no host stream hanging.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{fnv1a64, guest, pseudo_random_bytes, require_kvm, rvmm, scratch, Console, Entry};

const LIMIT: Duration = Duration::from_secs(30);
const CID: &str = "42";

/// The VM's socket path for a test, with no socket left there.
fn socket_path(name: &str) -> PathBuf {
    let path = scratch(&format!("{name}.vsock"));
    let _ = std::fs::remove_file(&path);
    path
}

/// Where a guest connection to host port `port` goes.
fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut path = uds.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

fn start(uds: &Path, name: &str) -> Console {
    require_kvm();
    let kernel = guest("vsock", Entry::Linux64);
    let vsock = format!("cid={CID},uds={}", uds.display());
    let mut vm = Console::start(
        &["--kernel", kernel.to_str().unwrap(), "--vsock", &vsock],
        name,
    );
    vm.expect(&format!("vsock: cid {CID}"), LIMIT);
    vm
}

/// The guest's connection to `listener`, within LIMIT.
fn accept(listener: &UnixListener, vm: &Console) -> UnixStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(LIMIT)).unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the guest never connected; console:\n{}",
                    vm.seen.join("\n")
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A host connection to guest port `port`: the line rvmm answers with
/// (`OK <port>` once the guest accepted; empty when it refused), and the
/// stream with a reader on it.
fn host_connect(uds: &Path, port: u32) -> (String, BufReader<UnixStream>) {
    let mut stream = UnixStream::connect(uds).expect("connect to the VM's vsock socket");
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    writeln!(stream, "CONNECT {port}").unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .expect("rvmm's answer to CONNECT");
    (line, reader)
}

fn read_line(reader: &mut BufReader<UnixStream>) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).expect("a line from the guest");
    line.trim_end().to_string()
}

/// Reads until EOF: the other side closed.
fn assert_closed(reader: &mut BufReader<UnixStream>, what: &str) {
    let mut rest = Vec::new();
    match reader.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{what}: {rest:?} before EOF"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "{what}: the stream did not close: {e}"
        ),
    }
}

#[test]
fn connections_both_ways_carry_lines_and_bulk_data() {
    let uds = socket_path("both-ways");
    let listener = UnixListener::bind(port_path(&uds, 5000)).unwrap();
    let mut vm = start(&uds, "vsock-both-ways");

    // Guest to host: the guest connected to port 5000 and wrote a line.
    let mut from_guest = BufReader::new(accept(&listener, &vm));
    assert_eq!(read_line(&mut from_guest), "rvmm-vsock-guest-to-host");
    vm.expect("vsock: 5000 connected", LIMIT);
    let echo = format!("from-host-on-the-guest-connection-{}", std::process::id());
    writeln!(from_guest.get_mut(), "echo {echo}").unwrap();
    assert_eq!(read_line(&mut from_guest), echo, "the guest's echo");

    // Host to guest: CONNECT, OK with rvmm's port for the host end.
    let (ok, mut to_guest) = host_connect(&uds, 6001);
    let port: u32 = ok
        .strip_prefix("OK ")
        .and_then(|p| p.trim_end().parse().ok())
        .unwrap_or_else(|| panic!("{ok:?} is not OK <port>"));
    assert!(port >= 1 << 30, "host-end port {port}");
    vm.expect("vsock: 6001 accepted", LIMIT);
    writeln!(to_guest.get_mut(), "echo hi-from-the-host").unwrap();
    assert_eq!(read_line(&mut to_guest), "hi-from-the-host");

    // 1 MiB from the guest, sent within the credit rvmm gives it.
    const BULK: usize = 1 << 20;
    writeln!(to_guest.get_mut(), "bulk {BULK}").unwrap();
    let mut bulk = vec![0u8; BULK];
    to_guest
        .read_exact(&mut bulk)
        .expect("the guest's bulk data");
    let bad = (0..BULK).find(|&i| bulk[i] != (i * 7 + 3) as u8);
    assert_eq!(bad, None, "bulk data differs from the guest's pattern");
    vm.expect(&format!("vsock: 6001 sent {BULK} bytes"), LIMIT);

    // 1 MiB to the guest, within the credit the guest gives rvmm.
    let data = pseudo_random_bytes(BULK, 5);
    writeln!(to_guest.get_mut(), "sink {BULK}").unwrap();
    to_guest.get_mut().write_all(&data).unwrap();
    let line = vm.expect("vsock: 6001 sink hash ", LIMIT);
    assert!(
        line.ends_with(&format!("{:#018x}", fnv1a64(&data))),
        "the guest's hash of the data differs: {line}"
    );

    // The host closes: the guest hears it and finishes the close.
    drop(to_guest);
    vm.expect("vsock: 6001 peer shutdown 3", LIMIT);
    drop(from_guest);
    vm.expect("vsock: 1024 peer shutdown 3", LIMIT);
}

#[test]
fn refusals_closes_and_resets_reach_the_other_side() {
    // Nobody listens on port 5000: the guest is refused.
    let uds = socket_path("refusals");
    let mut vm = start(&uds, "vsock-refusals");
    vm.expect("vsock: 5000 refused", LIMIT);

    // The guest has no listener on 7000: the host gets no OK, and EOF.
    let (answer, mut refused) = host_connect(&uds, 7000);
    assert_eq!(answer, "", "rvmm answered {answer:?} to a refused CONNECT");
    assert_closed(&mut refused, "refused CONNECT");

    // A line that is not CONNECT is closed at once.
    let mut junk = UnixStream::connect(&uds).unwrap();
    junk.set_read_timeout(Some(LIMIT)).unwrap();
    junk.write_all(b"HELLO 7000\n").unwrap();
    assert_closed(&mut BufReader::new(junk), "a junk line");

    // The guest shuts down: the host reads EOF after what was sent.
    let (ok, mut closing) = host_connect(&uds, 6002);
    assert!(ok.starts_with("OK "), "{ok:?}");
    writeln!(closing.get_mut(), "echo before-close").unwrap();
    assert_eq!(read_line(&mut closing), "before-close");
    writeln!(closing.get_mut(), "close").unwrap();
    assert_closed(&mut closing, "a connection the guest closed");
    vm.expect("vsock: 6002 closed", LIMIT);

    // The guest resets: the host reads EOF.
    let (ok, mut reset) = host_connect(&uds, 6003);
    assert!(ok.starts_with("OK "), "{ok:?}");
    writeln!(reset.get_mut(), "reset").unwrap();
    assert_closed(&mut reset, "a connection the guest reset");
    vm.expect("vsock: 6003 reset", LIMIT);

    // Still serving after all that.
    let (ok, mut last) = host_connect(&uds, 6004);
    assert!(ok.starts_with("OK "), "{ok:?}");
    writeln!(last.get_mut(), "echo still-here").unwrap();
    assert_eq!(read_line(&mut last), "still-here");
}

#[test]
fn a_guest_that_vanishes_mid_stream_closes_every_host_stream() {
    let uds = socket_path("vanish");
    let listener = UnixListener::bind(port_path(&uds, 5000)).unwrap();
    let mut vm = start(&uds, "vsock-vanish");
    let mut from_guest = BufReader::new(accept(&listener, &vm));
    assert_eq!(read_line(&mut from_guest), "rvmm-vsock-guest-to-host");
    let (ok, mut to_guest) = host_connect(&uds, 6005);
    assert!(ok.starts_with("OK "), "{ok:?}");
    // Mid-stream: the guest is sending bulk data when it is told to vanish
    // on another connection.
    writeln!(from_guest.get_mut(), "bulk 100000000").unwrap();
    let mut some = [0u8; 4096];
    from_guest.read_exact(&mut some).unwrap();
    writeln!(to_guest.get_mut(), "vanish").unwrap();
    let status = vm.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", vm.stderr());
    assert_closed(&mut to_guest, "the vanished guest's connection");
    let mut rest = Vec::new();
    from_guest
        .read_to_end(&mut rest)
        .expect("the host stream of a vanished guest ends");
    assert!(rest.len() < 100_000_000, "the bulk transfer was cut off");
}

#[test]
fn bad_vsock_options_are_refused_with_one_line() {
    let kernel = guest("vsock", Entry::Linux64);
    let live = socket_path("live");
    let _listener = UnixListener::bind(&live).unwrap();
    let long = format!("cid=3,uds=/tmp/{}", "x".repeat(100));
    let in_use = format!("cid=3,uds={}", live.display());
    for (spec, expected) in [
        ("cid=2,uds=/tmp/v.sock", "is not a guest context ID"),
        ("uds=/tmp/v.sock", "--vsock needs both"),
        (
            "cid=3,uds=/tmp/v.sock,port=1",
            "--vsock option 'port=1' is not known",
        ),
        (long.as_str(), "too long for the sockets rvmm makes"),
        (
            "cid=3,uds=/nonexistent-dir/v.sock",
            "give a path in a writable directory",
        ),
        (in_use.as_str(), "another process listens there"),
    ] {
        let run = rvmm(
            &["--kernel", kernel.to_str().unwrap(), "--vsock", spec],
            LIMIT,
        );
        assert_eq!(run.code(), Some(1), "{spec}: {}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{spec}: {}", run.stderr);
        assert!(lines[0].contains(expected), "{spec}: {}", lines[0]);
    }
}
