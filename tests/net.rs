//! virtio-net through a real tap: a polled test guest sends a frame that
//! the host captures on the tap, and prints the frames the host sends it.
//! Needs root (or CAP_NET_ADMIN) and /dev/net/tun, as CI has.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use common::tap::{check, require_tun, Tap};
use common::{guest, require_kvm, rvmm, Console, Entry};

const LIMIT: Duration = Duration::from_secs(30);
const ETHERTYPE: u16 = 0x88b5;
/// A raw socket on the tap's host side for frames of [`ETHERTYPE`].
struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(tap: &Tap) -> PacketSocket {
        let protocol = ETHERTYPE.to_be() as i32;
        // SAFETY: a new socket, owned from here on.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol) };
        check(raw, "AF_PACKET socket");
        // SAFETY: `raw` is a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = PacketSocket {
            fd,
            ifindex: tap.index(),
        };
        let address = socket.address([0; 6]);
        // SAFETY: binds to a sockaddr_ll of the right size.
        check(
            unsafe {
                libc::bind(
                    socket.fd.as_raw_fd(),
                    (&address as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            },
            "bind",
        );
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO takes one timeval.
        unsafe {
            libc::setsockopt(
                socket.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        socket
    }

    fn address(&self, mac: [u8; 6]) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = ETHERTYPE.to_be();
        address.sll_ifindex = self.ifindex;
        address.sll_halen = 6;
        address.sll_addr[..6].copy_from_slice(&mac);
        address
    }

    /// The next frame, or None after `limit`.
    fn receive(&self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: reads into a live buffer of the given size.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                return Some(buf[..n as usize].to_vec());
            }
        }
        None
    }

    fn send(&self, to: [u8; 6], payload: &[u8]) {
        let mut frame = to.to_vec();
        frame.extend([0x02, 0, 0, 0, 0, 0x01]);
        frame.extend(ETHERTYPE.to_be_bytes());
        frame.extend(payload);
        frame.resize(frame.len().max(60), 0);
        let address = self.address(to);
        // SAFETY: sends a live buffer to a sockaddr_ll of the right size.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

fn parse_mac(text: &str) -> [u8; 6] {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[test]
fn frames_cross_the_tap_both_ways() {
    require_kvm();
    require_tun();
    let tap = Tap::create(&format!("rvmmt{}", std::process::id() % 100_000));
    let packets = PacketSocket::open(&tap);
    let kernel = guest("net", Entry::Linux64);
    let mac = "06:00:ac:10:00:02";
    let net = format!("tap={},mac={mac}", tap.name);
    let mut vm = Console::start(
        &["--kernel", kernel.to_str().unwrap(), "--net", &net],
        "net",
    );
    // On a real tap the offloads are offered: checksums (CSUM 0, GUEST_CSUM
    // 1) and TCP segmentation both ways (GUEST_TSO4 7, HOST_TSO4 11).
    let line = vm.expect("net: features 0x", LIMIT);
    let features = u64::from_str_radix(line.rsplit("0x").next().unwrap(), 16).unwrap();
    for bit in [0, 1, 7, 8, 11, 12] {
        assert_ne!(
            features & (1 << bit),
            0,
            "feature bit {bit} not offered: {line}"
        );
    }
    let line = vm.expect("net: mac ", LIMIT);
    assert!(
        line.ends_with(mac),
        "the guest read MAC {line:?}, not {mac}"
    );
    vm.expect("net: sent", LIMIT);

    // The guest's broadcast, as the host's network stack received it.
    let frame = packets
        .receive(Duration::from_secs(10))
        .expect("no frame of the guest's EtherType arrived on the tap");
    assert_eq!(frame[..6], [0xff; 6], "destination");
    assert_eq!(frame[6..12], parse_mac(mac), "source");
    assert!(
        frame[14..].starts_with(b"rvmm-net-guest-to-host"),
        "payload {:?}",
        String::from_utf8_lossy(&frame[14..])
    );

    // Frames the host sends reach the guest, which prints their payload.
    let greeting = format!("rvmm-net-host-to-guest-{}", std::process::id());
    packets.send(parse_mac(mac), greeting.as_bytes());
    vm.expect(&format!("net: received {greeting}"), LIMIT);
    packets.send(parse_mac(mac), b"rvmm-net-quit");
    let status = vm.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", vm.stderr());
}

#[test]
fn rvmm_creates_a_missing_tap_and_it_is_gone_after_exit() {
    require_kvm();
    require_tun();
    let name = format!("rvmmc{}", std::process::id() % 100_000);
    let sys = Path::new("/sys/class/net").join(&name);
    assert!(!sys.exists());
    let kernel = guest("net", Entry::Linux64);
    let mut vm = Console::start(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--net",
            &format!("tap={name}"),
        ],
        "net-create",
    );
    let line = vm.expect("net: mac ", LIMIT);
    assert!(sys.exists(), "rvmm did not create tap {name}");
    // The default MAC: locally administered, unicast.
    let mac = parse_mac(line.rsplit(' ').next().unwrap());
    assert_eq!(mac[0] & 3, 2, "{line}");
    // SAFETY: kill(2) on the child this test started and still owns.
    let sent = unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    assert_eq!(sent, 0);
    vm.wait_exit(LIMIT);
    assert!(!sys.exists(), "tap {name} is left after rvmm exited");
}

#[test]
fn bad_net_options_are_refused_with_one_line() {
    let kernel = guest("net", Entry::Linux64);
    for (spec, expected) in [
        ("tap=a,speed=10", "--net option 'speed=10' is not known"),
        ("mac=06:00:00:00:00:01", "--net needs a tap"),
        ("tap=a,mac=ff:ff:ff:ff:ff:ff", "not a unicast address"),
        ("tap=this-name-is-too-long", "is not an interface name"),
    ] {
        let run = rvmm(
            &["--kernel", kernel.to_str().unwrap(), "--net", spec],
            LIMIT,
        );
        assert_eq!(run.code(), Some(1), "{spec}: {}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{spec}: {}", run.stderr);
        assert!(lines[0].contains(expected), "{spec}: {}", lines[0]);
    }
}
