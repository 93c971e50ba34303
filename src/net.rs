//! Network cards: `--net tap=NAME[,mac=MAC]` opens (or, with the privilege,
//! creates) the tap device NAME for a virtio-net device. A tap rvmm creates
//! is not persistent: the kernel removes it when rvmm exits.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::config::NetConfig;

const TUN_DEVICE: &str = "/dev/net/tun";
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, b'T' as u32, 202, libc::c_int);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open {TUN_DEVICE} for tap {tap}: {source}; load the tun module (modprobe tun) and give your user access to {TUN_DEVICE}")]
    Tun { tap: String, source: std::io::Error },
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

/// Opens the tap `name` for frames without packet information,
/// non-blocking. Creates it when it does not exist and rvmm may.
pub fn open_tap(name: &str) -> Result<File, NetError> {
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
    request.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
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
    Ok(tun)
}

/// Opens every card's tap, before anything else is built.
pub fn open_nets(nets: &[NetConfig]) -> Result<Vec<(File, [u8; 6])>, NetError> {
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
