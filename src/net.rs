//! Network cards: `--net tap=NAME[,mac=MAC]` opens (or, with the privilege,
//! creates) the tap device NAME for a virtio-net device. A tap rvmm creates
//! is not persistent: the kernel removes it when rvmm exits.
//!
//! The tap carries the virtio-net header before each frame (IFF_VNET_HDR,
//! 12 bytes), so the guest's checksum and segmentation offloads pass
//! through; which offloaded frames the tap may hand the guest follows what
//! the guest negotiated (TUNSETOFFLOAD, on the event loop).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rvmm_devices::virtio::net::SetOffloads;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
};

use crate::config::NetConfig;

const TUN_DEVICE: &str = "/dev/net/tun";
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
// TUNSETOFFLOAD flags: what the tap may hand its reader.
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, b'T' as u32, 202, libc::c_int);
vmm_sys_util::ioctl_iow_nr!(TUNSETOFFLOAD, b'T' as u32, 208, libc::c_uint);
vmm_sys_util::ioctl_iow_nr!(TUNSETVNETHDRSZ, b'T' as u32, 216, libc::c_int);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open {TUN_DEVICE} for tap {tap}: {source}; load the tun module (modprobe tun) and give your user access to {TUN_DEVICE}")]
    Tun { tap: String, source: std::io::Error },
    #[error("cannot set up tap {tap} for virtio-net headers: {source}; this host's tun driver is too old")]
    VnetHeader { tap: String, source: std::io::Error },
    #[error("cannot {action} tap {tap}: {source}; create it for your user first (ip tuntap add {tap} mode tap user $USER) or run rvmm with CAP_NET_ADMIN")]
    Attach {
        tap: String,
        action: &'static str,
        source: std::io::Error,
    },
}

/// The MAC address of a card without `mac=`: locally administered, the
/// same for the same tap name on every run.
pub fn default_mac(tap: &str) -> [u8; 6] {
    let hash = tap.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let h = hash.to_le_bytes();
    // 0x06: locally administered, unicast.
    [0x06, 0x72, 0x76, h[0], h[1], h[2]]
}

/// The tap's part of a card: it, and how to set its offloads when it has them.
pub struct Tap {
    pub file: File,
    pub set_offloads: Option<SetOffloads>,
}

/// What the tap may hand a guest that acknowledged `features`.
fn tun_offloads(features: u64) -> libc::c_uint {
    let has = |bit: u32| features & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        // Segments come with partial checksums: no checksum, no TSO.
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    for (bit, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_ECN, TUN_F_TSO_ECN),
    ] {
        if has(bit) {
            flags |= flag;
        }
    }
    flags
}

fn set_offload(tap: &File, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its flags by value; the descriptor is a tap.
    let rc = unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETOFFLOAD(), libc::c_ulong::from(flags)) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens the tap `name` for frames behind a 12-byte virtio-net header,
/// without packet information, non-blocking, offloads off until a guest
/// takes them. Creates it when it does not exist and rvmm may.
pub fn open_tap(name: &str) -> Result<Tap, NetError> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_DEVICE)
        .map_err(|source| NetError::Tun {
            tap: name.to_string(),
            source,
        })?;
    let existed = Path::new("/sys/class/net").join(name).exists();
    // SAFETY: ifreq is plain data; all zeros is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // Config parsing keeps the name shorter than IFNAMSIZ and free of NULs.
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `request` is; the
    // descriptor is the tun device opened above.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF(), &mut request) };
    if rc < 0 {
        return Err(NetError::Attach {
            tap: name.to_string(),
            action: if existed { "attach to" } else { "create" },
            source: std::io::Error::last_os_error(),
        });
    }
    if !existed {
        log::info!("created tap {name}; it is removed when rvmm exits");
    }
    let header_size: libc::c_int = rvmm_devices::virtio::net::NET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int, which `header_size` is.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETVNETHDRSZ(), &header_size) } < 0 {
        return Err(NetError::VnetHeader {
            tap: name.to_string(),
            source: std::io::Error::last_os_error(),
        });
    }
    // Offloads are offered only when the tap can have them all.
    let all = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
    let set_offloads = match set_offload(&tun, all).and_then(|()| set_offload(&tun, 0)) {
        Ok(()) => {
            let control = tun.try_clone().map_err(|source| NetError::VnetHeader {
                tap: name.to_string(),
                source,
            })?;
            let set: SetOffloads =
                Box::new(move |features| set_offload(&control, tun_offloads(features)));
            Some(set)
        }
        Err(e) => {
            log::info!("tap {name} has no offloads ({e}); the card offers none");
            let _ = set_offload(&tun, 0);
            None
        }
    };
    Ok(Tap {
        file: tun,
        set_offloads,
    })
}

/// Opens every card's tap, before anything else is built.
pub fn open_nets(nets: &[NetConfig]) -> Result<Vec<(Tap, [u8; 6])>, NetError> {
    nets.iter()
        .map(|net| {
            let tap = open_tap(&net.tap)?;
            let mac = net.mac.unwrap_or_else(|| default_mac(&net.tap));
            log::info!(
                "net {}: tap {}, MAC {}",
                net.id.as_deref().unwrap_or("-"),
                net.tap,
                format_mac(&mac)
            );
            Ok((tap, mac))
        })
        .collect()
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tap_hands_the_guest_only_what_it_negotiated() {
        let bit = |b: u32| 1u64 << b;
        assert_eq!(tun_offloads(0), 0);
        // TSO without checksums is no offload at all.
        assert_eq!(tun_offloads(bit(VIRTIO_NET_F_GUEST_TSO4)), 0);
        assert_eq!(tun_offloads(bit(VIRTIO_NET_F_GUEST_CSUM)), TUN_F_CSUM);
        let all = bit(VIRTIO_NET_F_GUEST_CSUM)
            | bit(VIRTIO_NET_F_GUEST_TSO4)
            | bit(VIRTIO_NET_F_GUEST_TSO6)
            | bit(VIRTIO_NET_F_GUEST_ECN);
        assert_eq!(
            tun_offloads(all),
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
        );
    }

    #[test]
    fn default_macs_are_stable_unicast_and_local() {
        let mac = default_mac("tap0");
        assert_eq!(mac, default_mac("tap0"));
        assert_ne!(mac, default_mac("tap1"));
        assert_eq!(mac[0] & 1, 0, "unicast");
        assert_eq!(mac[0] & 2, 2, "locally administered");
        assert_eq!(
            format_mac(&[6, 0x72, 0x76, 0, 0xab, 1]),
            "06:72:76:00:ab:01"
        );
    }
}
