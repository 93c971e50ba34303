//! What kind of KVM host rvmm runs on, and the kernel flags that get a stock
//! Linux guest as far as a PVM-backed host allows (see the project docs on
//! KVM test hosts).

use std::path::Path;

/// Kernel flags for PVM-backed hosts, whose instruction emulator lacks
/// XSAVE state handling, POPCNT and SMAP's CLAC/STAC, among others. The
/// TSC-deadline timer works there but is slow: measured on such a host, the
/// kernel unpacked its initramfs in 39 s without it against 51-56 s with it
/// (the LAPIC's own one-shot timer is used instead).
pub const PVM_KERNEL_FLAGS: &[&str] = &[
    "noxsave",
    "clearcpuid=popcnt,smap,smep,fsgsbase,pcid,invpcid,umip,rdpid,rdrand,rdseed,erms,fsrm,tsc_deadline_timer",
];

/// True when /dev/kvm is served by the `kvm_pvm` module rather than VT-x/AMD-V.
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// The flags to add to `cmdline` on this host: none on hardware-virtualized
/// hosts, and on PVM hosts those the user has not already given.
pub fn quirk_flags(pvm: bool, cmdline: &str) -> Vec<String> {
    if !pvm {
        return Vec::new();
    }
    PVM_KERNEL_FLAGS
        .iter()
        .filter(|flag| {
            let key = flag.split('=').next().unwrap_or(flag);
            !cmdline
                .split_whitespace()
                .any(|arg| arg.split('=').next() == Some(key))
        })
        .map(|flag| flag.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_added_on_hardware_hosts() {
        assert!(quirk_flags(false, "console=ttyS0").is_empty());
    }

    #[test]
    fn pvm_hosts_get_the_flags_once() {
        // The flags the project docs name for PVM hosts, written out here so
        // that a change to the list shows up as a failing test.
        assert_eq!(
            quirk_flags(true, "console=ttyS0").join(" "),
            "noxsave clearcpuid=popcnt,smap,smep,fsgsbase,pcid,invpcid,umip,rdpid,rdrand,rdseed,erms,fsrm,tsc_deadline_timer"
        );
        let given = quirk_flags(true, "noxsave clearcpuid=popcnt");
        assert!(given.is_empty(), "user's own flags win: {given:?}");
    }
}
