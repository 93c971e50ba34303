//! Tap devices for the network tests: a persistent tap, up, that a test
//! creates and deletes, on the host side of a guest's network card.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
// _IOW('T', 202, int) and _IOW('T', 203, int).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

pub fn require_tun() {
    assert!(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: load the tun module (modprobe tun)"
    );
    // SAFETY: geteuid only reads the process's ID.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests create tap devices: run them as root (or with CAP_NET_ADMIN)"
    );
}

pub fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request
}

pub fn check(rc: libc::c_int, what: &str) {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
}

/// A persistent tap, up, that this test made and deletes when dropped.
pub struct Tap {
    pub name: String,
}

impl Tap {
    pub fn create(name: &str) -> Tap {
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let mut request = ifreq(name);
        request.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
        // SAFETY: TUNSETIFF and TUNSETPERSIST on the tun device just opened,
        // with an ifreq and an int argument as they take.
        unsafe {
            check(
                libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request),
                "TUNSETIFF",
            );
            check(
                libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1),
                "TUNSETPERSIST",
            );
        }
        let tap = Tap { name: name.into() };
        tap.set_up();
        tap
    }

    fn set_up(&self) {
        // SAFETY: a socket for interface ioctls, owned from here on.
        let sock =
            unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)) };
        let mut request = ifreq(&self.name);
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one ifreq.
        unsafe {
            check(
                libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request),
                "SIOCGIFFLAGS",
            );
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            check(
                libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut request),
                "SIOCSIFFLAGS",
            );
        }
    }

    /// Gives the host side `address`/`prefix_len` (IPv4).
    pub fn set_ipv4(&self, address: [u8; 4], prefix_len: u32) {
        let sock = inet_socket();
        let as_sockaddr = |ip: [u8; 4]| {
            // SAFETY: sockaddr_in is plain data; all zeros is a valid value.
            let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from_ne_bytes(ip);
            // SAFETY: both are 16 bytes of plain data; the kernel reads the
            // ifreq's address as the sockaddr_in its family names.
            unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
        };
        let mask = (u32::MAX << (32 - prefix_len)).to_be_bytes();
        for (request_kind, ip, what) in [
            (libc::SIOCSIFADDR, address, "SIOCSIFADDR"),
            (libc::SIOCSIFNETMASK, mask, "SIOCSIFNETMASK"),
        ] {
            let mut request = ifreq(&self.name);
            request.ifr_ifru.ifru_addr = as_sockaddr(ip);
            // SAFETY: the ioctl reads one ifreq.
            let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request_kind, &mut request) };
            check(rc, what);
        }
    }

    pub fn index(&self) -> i32 {
        std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", self.name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if let Ok(tun) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
        {
            let mut request = ifreq(&self.name);
            request.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
            // SAFETY: as in `create`.
            unsafe {
                libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request);
                libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 0);
            }
        }
    }
}

/// A socket for interface ioctls.
fn inet_socket() -> OwnedFd {
    // SAFETY: socket(2) returns a new descriptor or -1, checked below.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    check(raw, "AF_INET socket");
    // SAFETY: `raw` is a fresh descriptor, owned from here on.
    unsafe { OwnedFd::from_raw_fd(raw) }
}
