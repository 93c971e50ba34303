//! The host side of the vsock device, in Firecracker's "hybrid" form: guest
//! stream connections are carried by host Unix streams.
//!
//! - A host program connects to the listening socket `uds_path` and writes
//!   `CONNECT <port>\n`; the guest's port `<port>` gets a REQUEST, and once
//!   the guest accepts, the host reads `OK <host port>\n` and the stream is
//!   the connection.
//! - A guest connection to the host (CID 2) port `<port>` is carried by a
//!   connection to `<uds_path>_<port>`, where a host program listens; none
//!   there and the guest is refused (RST).
//!
//! Every host socket is non-blocking and watched by the muxer's own epoll,
//! whose descriptor the VMM's event loop watches in turn; nothing here ever
//! blocks or takes unbounded work from the guest.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnKey, Connection, Outgoing, CONN_BUF_SIZE};
use super::packet::*;

/// Most connections (and host handshakes under way) at once: each holds a
/// host descriptor.
pub const MAX_CONNECTIONS: usize = 512;
/// Most RSTs queued for guest packets that belong to no connection; more
/// are dropped (the guest times out instead).
const MAX_QUEUED_RESETS: usize = 256;
/// How long the guest has to answer a host's REQUEST, a host to send its
/// `CONNECT` line, and the guest to finish a close with RST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// `CONNECT 4294967295\n` and a little more.
const MAX_HANDSHAKE_LINE: usize = 32;
/// Host ports rvmm gives host-initiated connections start here, as
/// Firecracker's do, far from the ports guests listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Host events taken in one round.
const EVENTS_PER_ROUND: usize = 32;
/// The longest socket path (`sun_path` holds 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// A host stream that has connected to the listening socket and not yet
/// sent its whole `CONNECT <port>` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

pub struct Muxer {
    guest_cid: u64,
    listener: UnixListener,
    uds_path: PathBuf,
    epoll: Epoll,
    timer: TimerFd,
    listener_watched: bool,
    connections: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Connections with packets for the guest, in the order they got them.
    rx_queue: VecDeque<ConnKey>,
    /// RSTs for guest packets that belong to no connection.
    resets: VecDeque<ConnKey>,
    next_local_port: u32,
}

impl Muxer {
    /// The host side for guest `guest_cid`: `listener` (non-blocking) takes
    /// host connections; guest connections go to `<uds_path>_<port>`.
    pub fn new(
        guest_cid: u64,
        listener: UnixListener,
        uds_path: PathBuf,
    ) -> std::io::Result<Muxer> {
        let epoll = Epoll::new()?;
        let timer = TimerFd::new().map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
        // Re-arming resets its count: a wait after that must not block.
        set_nonblocking(timer.as_raw_fd())?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, listener.as_raw_fd() as u64),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            timer.as_raw_fd(),
            EpollEvent::new(EventSet::IN, timer.as_raw_fd() as u64),
        )?;
        Ok(Muxer {
            guest_cid,
            listener,
            uds_path,
            epoll,
            timer,
            listener_watched: true,
            connections: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            rx_queue: VecDeque::new(),
            resets: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
        })
    }

    /// The descriptor that is readable when the host side has work.
    pub fn events_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Drops every connection (their host streams are closed): the guest
    /// reset the device. The listening socket stays.
    pub fn reset(&mut self) {
        self.connections.clear();
        self.by_fd.clear();
        self.handshakes.clear();
        self.rx_queue.clear();
        self.resets.clear();
        self.update_listener();
        self.arm_timer();
    }

    /// Serves the host sockets' events: new connections, `CONNECT` lines,
    /// streams that became readable or writable or hung up, timeouts.
    /// True when events were left for another round.
    pub fn poll_host(&mut self) -> bool {
        let mut events = [EpollEvent::default(); EVENTS_PER_ROUND];
        let count = match self.epoll.wait(0, &mut events) {
            Ok(count) => count,
            Err(e) => {
                log::debug!("vsock: cannot poll the host sockets: {e}");
                return false;
            }
        };
        for event in &events[..count] {
            let fd = event.fd();
            let set = event.event_set();
            if fd == self.listener.as_raw_fd() {
                self.accept();
            } else if fd == self.timer.as_raw_fd() {
                let _ = self.timer.wait();
                self.expire();
            } else if self.handshakes.contains_key(&fd) {
                self.read_handshake(fd);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                self.host_event(key, set);
            }
        }
        count == EVENTS_PER_ROUND
    }

    fn accept(&mut self) {
        while self.slots_left() {
            // SAFETY: accept4 on the listener this muxer owns, without an
            // address; a new descriptor comes back, owned from here on.
            let fd = unsafe {
                libc::accept4(
                    self.listener.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::WouldBlock {
                    log::debug!("vsock: cannot accept a host connection: {e}");
                }
                break;
            }
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
            if self.watch(fd, EventSet::IN).is_err() {
                continue;
            }
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                    deadline: Instant::now() + HANDSHAKE_TIMEOUT,
                },
            );
            // The line is often there already.
            self.read_handshake(fd);
        }
        self.update_listener();
        self.arm_timer();
    }

    fn slots_left(&self) -> bool {
        self.connections.len() + self.handshakes.len() < MAX_CONNECTIONS
    }

    /// Watches the listener only while another connection may be taken, so
    /// that a full house does not keep the loop busy.
    fn update_listener(&mut self) {
        let wanted = self.slots_left();
        if wanted != self.listener_watched {
            let events = if wanted {
                EventSet::IN
            } else {
                EventSet::empty()
            };
            let fd = self.listener.as_raw_fd();
            if self
                .epoll
                .ctl(
                    ControlOperation::Modify,
                    fd,
                    EpollEvent::new(events, fd as u64),
                )
                .is_ok()
            {
                self.listener_watched = wanted;
            }
        }
    }

    fn watch(&self, fd: RawFd, events: EventSet) -> std::io::Result<()> {
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(events, fd as u64),
            )
            .inspect_err(|e| log::debug!("vsock: cannot watch a host socket: {e}"))
    }

    /// Reads a host's `CONNECT <port>\n` a byte at a time, so that nothing
    /// it sends after the line is taken before the guest has accepted.
    fn read_handshake(&mut self, fd: RawFd) {
        let Some(handshake) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8];
        let port = loop {
            match handshake.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&handshake.line),
                Ok(1) if handshake.line.len() < MAX_HANDSHAKE_LINE => handshake.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                // EOF, an error, or a line too long.
                _ => break None,
            }
        };
        let handshake = self.handshakes.remove(&fd).expect("looked up above");
        let Some(port) = port else {
            log::debug!(
                "vsock: a host connection sent {:?}, not CONNECT <port>; closed",
                String::from_utf8_lossy(&handshake.line)
            );
            self.update_listener();
            return;
        };
        let key = ConnKey {
            local_port: self.allocate_local_port(),
            peer_port: port,
        };
        let mut conn =
            Connection::host_initiated(handshake.stream, Instant::now() + CONNECT_TIMEOUT);
        // Still watched for its line; `changed` sets what it needs now.
        conn.watched = EventSet::IN;
        self.add_connection(key, conn);
        self.arm_timer();
    }

    /// A host port that no other connection has.
    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.connections.keys().any(|k| k.local_port == port) {
                return port;
            }
        }
    }

    /// Adds `conn`, whose stream the epoll watches already, under `key`.
    fn add_connection(&mut self, key: ConnKey, conn: Connection) {
        let fd = conn.stream.as_raw_fd();
        self.by_fd.insert(fd, key);
        self.connections.insert(key, conn);
        self.changed(key);
    }

    /// After anything about connection `key` changed: queues it if it has
    /// packets for the guest, and watches what its stream needs.
    fn changed(&mut self, key: ConnKey) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        if conn.has_pending() && !conn.queued {
            conn.queued = true;
            self.rx_queue.push_back(key);
        }
        let wanted = conn.wanted_events();
        if wanted != conn.watched {
            let fd = conn.stream.as_raw_fd();
            let event = EpollEvent::new(wanted, fd as u64);
            match self.epoll.ctl(ControlOperation::Modify, fd, event) {
                Ok(()) => conn.watched = wanted,
                Err(e) => log::debug!("vsock: cannot watch a host stream: {e}"),
            }
        }
    }

    fn host_event(&mut self, key: ConnKey, set: EventSet) {
        let closing = Instant::now() + CONNECT_TIMEOUT;
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::OUT) {
            conn.host_writable();
        }
        if set.contains(EventSet::IN) {
            conn.host_readable();
        }
        if set.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            conn.host_hung_up(closing);
        }
        self.changed(key);
        self.arm_timer();
    }

    /// Gives up what has waited too long: handshakes, REQUESTs the guest
    /// never answered, closes it never finished.
    fn expire(&mut self) {
        let now = Instant::now();
        self.handshakes.retain(|_, h| h.deadline > now);
        let expired: Vec<ConnKey> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            if let Some(conn) = self.connections.get_mut(&key) {
                log::debug!("vsock: connection {key:?} timed out; resetting it");
                conn.kill();
            }
            self.changed(key);
        }
        self.update_listener();
        self.arm_timer();
    }

    /// Sets the timer for the earliest deadline, or stops it.
    fn arm_timer(&mut self) {
        let earliest = self
            .handshakes
            .values()
            .map(|h| h.deadline)
            .chain(self.connections.values().filter_map(|c| c.deadline))
            .min();
        let result = match earliest {
            // A zero duration would stop the timer: wait at least 1 ms.
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                self.timer.reset(left.max(Duration::from_millis(1)), None)
            }
            None => self.timer.clear(),
        };
        if let Err(e) = result {
            log::debug!("vsock: cannot set the connection timer: {e}");
        }
    }

    /// A packet from the guest (its header checked by the device, its
    /// payload whole).
    pub fn guest_packet(&mut self, header: &Header, payload: &[u8]) {
        if header.src_cid != self.guest_cid || header.dst_cid != HOST_CID {
            log::debug!(
                "vsock: packet from CID {} to CID {} dropped: not from this guest to the host",
                header.src_cid,
                header.dst_cid
            );
            return;
        }
        let key = ConnKey {
            local_port: header.dst_port,
            peer_port: header.src_port,
        };
        if header.kind != TYPE_STREAM {
            self.reset_unknown(key, header.op);
            return;
        }
        if !self.connections.contains_key(&key) {
            match header.op {
                OP_REQUEST => self.guest_connect(key, header),
                op => self.reset_unknown(key, op),
            }
            return;
        }
        let conn = self.connections.get_mut(&key).expect("checked above");
        conn.update_peer_credit(header.buf_alloc, header.fwd_cnt);
        match header.op {
            OP_RST => {
                self.remove(key);
                return;
            }
            OP_RESPONSE => conn.accept_response(key.local_port),
            OP_RW => conn.guest_data(payload),
            OP_SHUTDOWN => conn.peer_shutdown(header.flags),
            OP_CREDIT_REQUEST => conn.credit_requested_by_peer(),
            OP_CREDIT_UPDATE => {}
            // A second REQUEST, or an op that does not exist.
            _ => conn.kill(),
        }
        self.changed(key);
        self.arm_timer();
    }

    /// The guest connects to host port `key.local_port`: rvmm connects to
    /// `<uds_path>_<port>` and answers RESPONSE, or RST when nobody listens.
    fn guest_connect(&mut self, key: ConnKey, header: &Header) {
        if !self.slots_left() {
            log::debug!("vsock: {MAX_CONNECTIONS} connections open; refusing another");
            self.reset_unknown(key, OP_REQUEST);
            return;
        }
        let mut path = self.uds_path.as_os_str().to_owned();
        path.push(format!("_{}", key.local_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!(
                    "vsock: guest connection to port {} refused: {}: {e}",
                    key.local_port,
                    Path::new(&path).display()
                );
                self.reset_unknown(key, OP_REQUEST);
                return;
            }
        };
        if self.watch(stream.as_raw_fd(), EventSet::empty()).is_err() {
            self.reset_unknown(key, OP_REQUEST);
            return;
        }
        let conn = Connection::guest_initiated(stream, header.buf_alloc, header.fwd_cnt);
        self.add_connection(key, conn);
        self.update_listener();
    }

    /// Answers a packet of no connection with RST (never an RST with one).
    fn reset_unknown(&mut self, key: ConnKey, op: u16) {
        if op != OP_RST && self.resets.len() < MAX_QUEUED_RESETS {
            self.resets.push_back(key);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.connections.remove(&key) {
            self.by_fd.remove(&conn.stream.as_raw_fd());
            // Closing the stream takes it out of the epoll set.
        }
        self.update_listener();
    }

    /// Whether a packet waits for the guest.
    pub fn has_packets(&self) -> bool {
        !self.resets.is_empty() || !self.rx_queue.is_empty()
    }

    /// The next packet for the guest, with at most `payload.len()` bytes of
    /// data put in `payload`; None when nothing can be sent now.
    pub fn next_packet(&mut self, payload: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(key) = self.resets.pop_front() {
            return Some((self.header(key, OP_RST, 0, 0, 0), 0));
        }
        let closing = Instant::now() + CONNECT_TIMEOUT;
        while let Some(key) = self.rx_queue.pop_front() {
            let Some(conn) = self.connections.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            let Some(Outgoing {
                op,
                flags,
                len,
                fwd_cnt,
            }) = conn.next_packet(payload, closing)
            else {
                self.changed(key);
                continue;
            };
            if op == OP_RST {
                self.remove(key);
            } else {
                self.changed(key);
            }
            if op == OP_SHUTDOWN {
                // A close that the guest must finish in time.
                self.arm_timer();
            }
            return Some((self.header(key, op, flags, len as u32, fwd_cnt), len));
        }
        None
    }

    fn header(&self, key: ConnKey, op: u16, flags: u32, len: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt,
        }
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller owns.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) >= 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The port of a `CONNECT <port>` line.
fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connects to the Unix stream socket at `path` without waiting: a listener
/// whose backlog is full refuses, as one that is not there does.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeros is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= address.sun_path.len() {
        return Err(std::io::Error::from(ErrorKind::InvalidInput));
    }
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: creates a new socket; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: connect reads one sockaddr_un of the size given, which
    // `address` is; the socket is the one just made.
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT -1"), None);
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"connect 52"), None);
        assert_eq!(parse_connect(b"CONNECT 52 x"), None);
    }
}
