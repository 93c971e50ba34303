//! A client of rvmm's (or Firecracker's) API: the VMM serving it on a
//! socket, its console on a pipe, and one request per connection.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::scratch;

const LIMIT: Duration = Duration::from_secs(30);

/// A VMM serving its API on a socket, its console on a pipe.
pub struct Served {
    pub child: Child,
    pub socket: PathBuf,
    pub console: std::sync::mpsc::Receiver<String>,
}

impl Served {
    pub fn start(binary: &Path, extra: &[&str], name: &str) -> Served {
        let socket = scratch(&format!("{name}.api"));
        let _ = std::fs::remove_file(&socket);
        let mut child = Command::new(binary)
            .arg("--api-sock")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(scratch(&format!("{name}.stderr"))).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let console = super::read_lines(child.stdout.take().unwrap());
        assert!(
            wait_for_socket(&socket, LIMIT, Duration::from_millis(10)),
            "{name}: no API socket at {}",
            socket.display()
        );
        Served {
            child,
            socket,
            console,
        }
    }

    /// Sends one request on a fresh connection: (status, body).
    pub fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        request(&self.socket, method, path, body)
    }

    /// Waits for a console line containing `marker`.
    pub fn expect(&self, marker: &str) -> String {
        self.wait_for(marker).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits for a console line containing `marker`, or says why none came.
    pub fn wait_for(&self, marker: &str) -> Result<String, String> {
        line_with(&self.console, marker, LIMIT)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // Firecracker now and then ignores SIGTERM: SIGKILL ends both.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next of `lines` that contains `marker`, within `limit`, or why none
/// came.
pub fn line_with(
    lines: &std::sync::mpsc::Receiver<String>,
    marker: &str,
    limit: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(marker) => return Ok(line),
            Ok(_) => {}
            Err(e) => return Err(format!("no console line with {marker:?}: {e:?}")),
        }
    }
}

/// Waits until something accepts connections at `socket`, trying every
/// `poll`; false if nothing does within `limit`.
pub fn wait_for_socket(socket: &Path, limit: Duration, poll: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while UnixStream::connect(socket).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(poll);
    }
    true
}

/// Sends one request to the API at `socket` on a fresh connection:
/// (status, body).
pub fn request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
    read_response(&mut BufReader::new(stream))
}

pub fn read_response(reader: &mut impl BufRead) -> (u16, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("a status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}
