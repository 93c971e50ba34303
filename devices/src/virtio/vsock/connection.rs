//! One stream connection between a guest vsock port and a host Unix stream:
//! its state, its credit both ways (virtio-vsock flow control), the guest's
//! data that the host stream has not taken yet, and what it has to tell the
//! guest next.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::packet::*;

/// What rvmm offers the guest as receive buffer per connection (`buf_alloc`):
/// the guest's data that the host stream has not taken yet waits here.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;
/// Forwarded bytes after which the guest is told of its new credit, when
/// no other packet has told it.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;

/// A connection, named by the host's port and the guest's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The host connected (`CONNECT <port>`): REQUEST goes to the guest,
    /// which has not answered yet.
    LocalInit,
    Established,
}

// What the connection has to tell the guest, in this order.
const PENDING_RST: u8 = 1;
const PENDING_REQUEST: u8 = 2;
const PENDING_RESPONSE: u8 = 4;
const PENDING_SHUTDOWN: u8 = 8;
const PENDING_CREDIT_UPDATE: u8 = 16;
const PENDING_CREDIT_REQUEST: u8 = 32;
/// The host stream may have data for the guest.
const PENDING_RW: u8 = 64;

/// Writes what the stream takes now: Ok(0) when it takes nothing, Err
/// when the host end is unusable.
fn write_stream(stream: &mut UnixStream, data: &[u8]) -> Result<usize, ()> {
    match stream.write(data) {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
        Err(e) => {
            log::debug!("vsock: the host end cannot take data ({e}); resetting");
            Err(())
        }
    }
}

/// One packet for the guest: its op and flags, and the payload length (the
/// payload itself is in the buffer `next_packet` was given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub op: u16,
    pub flags: u32,
    pub len: usize,
    pub fwd_cnt: u32,
}

pub struct Connection {
    pub stream: UnixStream,
    pub state: State,
    pending: u8,
    shutdown_flags: u32,
    /// The guest's receive buffer and what it has consumed of what rvmm sent.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes the host stream has taken.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data the host stream has not taken yet (at most CONN_BUF_SIZE).
    tx_buf: VecDeque<u8>,
    /// SHUTDOWN flags the guest sent.
    peer_shutdown: u32,
    /// The host stream gave EOF: the host sends no more.
    host_eof: bool,
    /// The host closed its end altogether (EPOLLHUP).
    host_gone: bool,
    credit_requested: bool,
    write_shut: bool,
    /// When the connection is given up: a REQUEST the guest does not answer,
    /// or a close the guest does not finish with RST.
    pub deadline: Option<Instant>,
    /// Whether it waits in the muxer's queue of connections with packets.
    pub queued: bool,
    /// What the muxer's epoll watches on `stream` now.
    pub watched: EventSet,
}

impl Connection {
    /// A connection the host asked for: REQUEST goes to the guest first.
    pub fn host_initiated(stream: UnixStream, deadline: Instant) -> Connection {
        let mut conn = Connection::new(stream, State::LocalInit, 0, 0);
        conn.pending = PENDING_REQUEST;
        conn.deadline = Some(deadline);
        conn
    }

    /// A connection the guest asked for (with its REQUEST's credit), which
    /// the host accepted: RESPONSE goes to the guest.
    pub fn guest_initiated(stream: UnixStream, buf_alloc: u32, fwd_cnt: u32) -> Connection {
        let mut conn = Connection::new(stream, State::Established, buf_alloc, fwd_cnt);
        conn.pending = PENDING_RESPONSE;
        conn
    }

    fn new(stream: UnixStream, state: State, buf_alloc: u32, fwd_cnt: u32) -> Connection {
        Connection {
            stream,
            state,
            pending: 0,
            shutdown_flags: 0,
            peer_buf_alloc: buf_alloc,
            peer_fwd_cnt: Wrapping(fwd_cnt),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            peer_shutdown: 0,
            host_eof: false,
            host_gone: false,
            credit_requested: false,
            write_shut: false,
            deadline: None,
            queued: false,
            watched: EventSet::empty(),
        }
    }

    pub fn has_pending(&self) -> bool {
        self.pending != 0
    }

    /// Whether the connection is over: it has only RST left to send.
    pub fn is_killed(&self) -> bool {
        self.pending == PENDING_RST
    }

    /// Ends the connection: RST goes to the guest, nothing else does.
    pub fn kill(&mut self) {
        self.pending = PENDING_RST;
        self.tx_buf = VecDeque::new();
        self.deadline = None;
    }

    /// How much more the guest can take now.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Takes the credit every guest packet carries.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// The guest answered the host's REQUEST: the host is told the port
    /// rvmm gave its end (`OK <port>`), as Firecracker does.
    pub fn accept_response(&mut self, local_port: u32) {
        if self.state != State::LocalInit {
            self.kill();
            return;
        }
        self.state = State::Established;
        self.deadline = None;
        let ack = format!("OK {local_port}\n");
        match self.stream.write(ack.as_bytes()) {
            Ok(n) if n == ack.len() => {}
            _ => self.kill(),
        }
    }

    /// Data from the guest, for the host stream. A guest that sends more
    /// than its credit allows, or after it said it would not, is reset.
    pub fn guest_data(&mut self, data: &[u8]) {
        if self.state != State::Established || self.peer_shutdown & SHUTDOWN_SEND != 0 {
            self.kill();
            return;
        }
        if self.tx_buf.len() + data.len() > CONN_BUF_SIZE as usize {
            log::debug!("vsock: the guest sent more than its credit; resetting the connection");
            self.kill();
            return;
        }
        if self.host_gone {
            // Nobody reads it any more; the guest has been told (SHUTDOWN).
            return;
        }
        let taken = if self.tx_buf.is_empty() {
            match self.write_host(data) {
                Some(n) => n,
                None => return,
            }
        } else {
            0
        };
        self.tx_buf.extend(&data[taken..]);
        self.after_forwarding();
    }

    /// The host stream can take more: passes on what waits.
    pub fn host_writable(&mut self) {
        while !self.tx_buf.is_empty() {
            match write_stream(&mut self.stream, self.tx_buf.as_slices().0) {
                Ok(0) => break,
                Ok(n) => {
                    self.fwd_cnt += n as u32;
                    self.tx_buf.drain(..n);
                }
                Err(()) => {
                    self.kill();
                    return;
                }
            }
        }
        self.after_forwarding();
    }

    /// Writes to the host stream and counts what it took; None when the
    /// host end is unusable (the connection is then killed).
    fn write_host(&mut self, data: &[u8]) -> Option<usize> {
        match write_stream(&mut self.stream, data) {
            Ok(n) => {
                self.fwd_cnt += n as u32;
                Some(n)
            }
            Err(()) => {
                self.kill();
                None
            }
        }
    }

    /// After guest data moved on: finishes a shutdown the guest asked for
    /// once everything is through, and tells the guest of its credit when
    /// enough has moved.
    fn after_forwarding(&mut self) {
        if self.is_killed() || !self.tx_buf.is_empty() {
            return;
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            // Linux waits for this RST to finish its close.
            self.kill();
            return;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.write_shut {
            self.write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending |= PENDING_CREDIT_UPDATE;
        }
    }

    /// The guest's SHUTDOWN.
    pub fn peer_shutdown(&mut self, flags: u32) {
        self.peer_shutdown |= flags & SHUTDOWN_BOTH;
        if self.peer_shutdown & SHUTDOWN_RCV != 0 {
            self.pending &= !PENDING_RW;
        }
        if self.host_gone && self.peer_shutdown == SHUTDOWN_BOTH {
            self.kill();
            return;
        }
        self.after_forwarding();
    }

    pub fn credit_requested_by_peer(&mut self) {
        self.pending |= PENDING_CREDIT_UPDATE;
    }

    /// The host stream is readable (data, or EOF).
    pub fn host_readable(&mut self) {
        if self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
        {
            self.pending |= PENDING_RW;
        }
    }

    /// The host closed its end altogether. What it wrote before is still
    /// passed on, and its EOF then tells the guest.
    pub fn host_hung_up(&mut self, closing_deadline: Instant) {
        if self.host_gone || self.is_killed() {
            return;
        }
        self.host_gone = true;
        self.tx_buf = VecDeque::new();
        if self.state == State::LocalInit || self.peer_shutdown == SHUTDOWN_BOTH {
            self.kill();
        } else if self.host_eof || self.peer_shutdown & SHUTDOWN_RCV != 0 {
            self.shutdown_to_guest(SHUTDOWN_BOTH, closing_deadline);
        } else {
            self.host_readable();
        }
    }

    fn shutdown_to_guest(&mut self, flags: u32, closing_deadline: Instant) {
        self.host_eof = true;
        self.pending |= PENDING_SHUTDOWN;
        self.shutdown_flags |= flags;
        if self.shutdown_flags == SHUTDOWN_BOTH {
            self.deadline = Some(closing_deadline);
        }
    }

    /// The next packet for the guest, its payload (for RW) read from the
    /// host stream into `payload`; None when there is nothing to send now.
    pub fn next_packet(
        &mut self,
        payload: &mut [u8],
        closing_deadline: Instant,
    ) -> Option<Outgoing> {
        loop {
            let op = match self.pending.trailing_zeros() {
                0 => {
                    self.pending = 0;
                    OP_RST
                }
                1 => self.take(PENDING_REQUEST, OP_REQUEST),
                2 => self.take(PENDING_RESPONSE, OP_RESPONSE),
                3 => self.take(PENDING_SHUTDOWN, OP_SHUTDOWN),
                4 => self.take(PENDING_CREDIT_UPDATE, OP_CREDIT_UPDATE),
                5 => self.take(PENDING_CREDIT_REQUEST, OP_CREDIT_REQUEST),
                6 => match self.read_host(payload, closing_deadline) {
                    Some(out) => return Some(out),
                    None => continue,
                },
                _ => return None,
            };
            let flags = if op == OP_SHUTDOWN {
                self.shutdown_flags
            } else {
                0
            };
            return Some(self.outgoing(op, flags, 0));
        }
    }

    fn take(&mut self, bit: u8, op: u16) -> u16 {
        self.pending &= !bit;
        op
    }

    fn outgoing(&mut self, op: u16, flags: u32, len: usize) -> Outgoing {
        // Every packet tells the guest its credit.
        self.last_fwd_cnt_sent = self.fwd_cnt;
        self.pending &= !PENDING_CREDIT_UPDATE;
        Outgoing {
            op,
            flags,
            len,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// An RW packet of what the host stream has, as much as the guest's
    /// credit and `payload` allow; a SHUTDOWN at the stream's EOF; None
    /// (and RW no longer pending) when it has nothing now.
    fn read_host(&mut self, payload: &mut [u8], closing_deadline: Instant) -> Option<Outgoing> {
        let credit = self.peer_credit() as usize;
        if credit == 0 {
            self.pending &= !PENDING_RW;
            if !self.credit_requested {
                self.credit_requested = true;
                self.pending |= PENDING_CREDIT_REQUEST;
            }
            return None;
        }
        let room = payload.len().min(credit);
        match self.stream.read(&mut payload[..room]) {
            Ok(0) => {
                self.pending &= !PENDING_RW;
                let flags = if self.host_gone {
                    SHUTDOWN_BOTH
                } else {
                    SHUTDOWN_SEND
                };
                self.shutdown_to_guest(flags, closing_deadline);
                None
            }
            Ok(n) => {
                self.rx_cnt += n as u32;
                Some(self.outgoing(OP_RW, 0, n))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.pending &= !PENDING_RW;
                None
            }
            Err(e) => {
                log::debug!("vsock: cannot read the host end ({e}); resetting");
                self.kill();
                None
            }
        }
    }

    /// What the muxer's epoll should watch on the stream now (hang-ups
    /// and errors are always reported).
    pub fn wanted_events(&self) -> EventSet {
        let mut events = EventSet::empty();
        if self.state == State::Established
            && !self.is_killed()
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.pending & PENDING_RW == 0
            && self.peer_credit() > 0
        {
            events |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() && !self.is_killed() {
            events |= EventSet::OUT;
        }
        events
    }
}
