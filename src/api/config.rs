//! Firecracker's configuration (a `--config-file`, or what the API's PUT
//! requests gathered) turned into rvmm's `VmConfig`, with Firecracker's
//! meanings: the root drive becomes /dev/vda and `root=` on the command
//! line, drives follow in the order they were first put, Firecracker's
//! default machine is 1 vCPU and 128 MiB.

use std::path::PathBuf;

use super::model::{BootSource, Drive, FullConfig, MachineConfig, NetworkInterface};
use crate::config::{DiskConfig, NetConfig, VmConfig, VsockConfig};

/// Firecracker's default kernel command line, used when `boot_args` is absent.
pub const FIRECRACKER_DEFAULT_ARGS: &str =
    "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiConfigError {
    #[error("Start microvm error: Cannot start microvm without kernel configuration.")]
    NoKernel,
    #[error("Boot source error: The kernel file cannot be opened: {0}")]
    Kernel(String),
    #[error("Boot source error: The initrd file cannot be opened: {0}")]
    Initrd(String),
    #[error("Drive config error: the drive {0} has no path_on_host; rvmm serves only drives backed by a host file (no vhost-user socket)")]
    DrivePath(String),
    #[error("Drive config error: Unable to open the block device backing file {path}: {reason}")]
    DriveFile { path: String, reason: String },
    #[error("Drive config error: A root block device already exists ({0}).")]
    TwoRoots(String),
    #[error("Drive config error: {what} is not supported by rvmm; leave it out")]
    DriveOption { what: String },
    #[error("Machine config error: The number of vCPUs must be greater than 0 and at most {max}; rvmm has no SMT.")]
    VcpuCount { max: u8 },
    #[error("Machine config error: the memory size must be at least {min} MiB")]
    MemSize { min: u64 },
    #[error("Machine config error: {0} is not supported by rvmm; leave it out")]
    MachineOption(&'static str),
    #[error("Network interface error: {0}")]
    Net(String),
    #[error("Vsock config error: {0}")]
    Vsock(String),
    #[error("rvmm does not have {0}; leave it out of the configuration")]
    Unsupported(&'static str),
}

/// Checks a boot source as Firecracker does when it is put: the kernel (and
/// initrd) can be opened.
pub fn check_boot_source(source: &BootSource) -> Result<(), ApiConfigError> {
    std::fs::File::open(&source.kernel_image_path)
        .map_err(|e| ApiConfigError::Kernel(e.to_string()))?;
    if let Some(initrd) = &source.initrd_path {
        std::fs::File::open(initrd).map_err(|e| ApiConfigError::Initrd(e.to_string()))?;
    }
    Ok(())
}

/// Checks a drive as Firecracker does when it is put: its file can be
/// opened, and it asks for nothing rvmm lacks.
pub fn check_drive(drive: &Drive) -> Result<(), ApiConfigError> {
    let path = drive
        .path_on_host
        .as_ref()
        .ok_or_else(|| ApiConfigError::DrivePath(drive.drive_id.clone()))?;
    for (given, what) in [
        (drive.rate_limiter.is_some(), "rate_limiter"),
        (drive.socket.is_some(), "socket (vhost-user)"),
        (
            drive.io_engine.as_deref().is_some_and(|e| e != "Sync"),
            "io_engine other than Sync",
        ),
        (
            drive.partuuid.is_some() && !drive.is_root_device,
            "partuuid on a drive that is not the root",
        ),
    ] {
        if given {
            return Err(ApiConfigError::DriveOption { what: what.into() });
        }
    }
    let read_only = drive.is_read_only.unwrap_or(false);
    std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map(drop)
        .map_err(|e| ApiConfigError::DriveFile {
            path: path.clone(),
            reason: e.to_string(),
        })
}

/// Checks a machine configuration against what rvmm can build.
pub fn check_machine(machine: &MachineConfig) -> Result<(), ApiConfigError> {
    let max = crate::x86::mptable::MAX_CPUS;
    if machine.vcpu_count == 0 || machine.vcpu_count > max || machine.smt {
        return Err(ApiConfigError::VcpuCount { max });
    }
    let min = crate::memory::MIN_MEM_MIB;
    if machine.mem_size_mib < min {
        return Err(ApiConfigError::MemSize { min });
    }
    if machine.track_dirty_pages {
        return Err(ApiConfigError::MachineOption(
            "track_dirty_pages (diff snapshots)",
        ));
    }
    if machine.cpu_template.is_some() {
        return Err(ApiConfigError::MachineOption("cpu_template"));
    }
    if !matches!(machine.huge_pages.as_str(), "None" | "2M") {
        return Err(ApiConfigError::MachineOption(
            "huge_pages other than None or 2M",
        ));
    }
    Ok(())
}

fn net_config(iface: &NetworkInterface) -> Result<NetConfig, ApiConfigError> {
    if iface.rx_rate_limiter.is_some() || iface.tx_rate_limiter.is_some() {
        return Err(ApiConfigError::Net(
            "rate limiters are not supported by rvmm; leave them out".into(),
        ));
    }
    let mut spec = format!(
        "tap={},id={}",
        iface.host_dev_name,
        iface.iface_id.replace(',', ",,")
    );
    if let Some(mac) = &iface.guest_mac {
        spec.push_str(&format!(",mac={mac}"));
    }
    spec.parse()
        .map_err(|e: crate::config::ConfigError| ApiConfigError::Net(e.to_string()))
}

/// The VM `full` describes, on top of `base` (rvmm's own settings from its
/// command line: console, logging, seccomp, stop timeout).
pub fn vm_config(full: &FullConfig, base: &VmConfig) -> Result<VmConfig, ApiConfigError> {
    if let Some(what) = full.unsupported() {
        return Err(ApiConfigError::Unsupported(what));
    }
    let source = full.boot_source.as_ref().ok_or(ApiConfigError::NoKernel)?;
    check_boot_source(source)?;
    let machine = full.machine_config.clone().unwrap_or_default();
    check_machine(&machine)?;
    let mut args = source
        .boot_args
        .clone()
        .unwrap_or_else(|| FIRECRACKER_DEFAULT_ARGS.to_string());
    // The root drive is /dev/vda, the others follow in their order.
    let mut drives: Vec<&Drive> = Vec::new();
    for drive in &full.drives {
        check_drive(drive)?;
        if drive.is_root_device {
            if let Some(root) = drives.first().filter(|d| d.is_root_device) {
                return Err(ApiConfigError::TwoRoots(root.drive_id.clone()));
            }
            drives.insert(0, drive);
        } else {
            drives.push(drive);
        }
    }
    if let Some(root) = drives.first().filter(|d| d.is_root_device) {
        let mode = if root.is_read_only.unwrap_or(false) {
            "ro"
        } else {
            "rw"
        };
        let device = match &root.partuuid {
            Some(uuid) => format!("PARTUUID={uuid}"),
            None => "/dev/vda".to_string(),
        };
        args.push_str(&format!(" root={device} {mode}"));
    }
    let disks = drives
        .iter()
        .map(|d| DiskConfig {
            path: PathBuf::from(d.path_on_host.clone().unwrap_or_default()),
            read_only: d.is_read_only.unwrap_or(false),
            id: Some(d.drive_id.chars().take(20).collect()),
        })
        .collect();
    let nets = full
        .network_interfaces
        .iter()
        .map(net_config)
        .collect::<Result<_, _>>()?;
    let vsock = full
        .vsock
        .as_ref()
        .map(|v| {
            format!("cid={},uds={}", v.guest_cid, v.uds_path.replace(',', ",,"))
                .parse::<VsockConfig>()
                .map_err(|e| ApiConfigError::Vsock(e.to_string()))
        })
        .transpose()?;
    Ok(VmConfig {
        kernel: PathBuf::from(&source.kernel_image_path),
        initrd: source.initrd_path.as_ref().map(PathBuf::from),
        cmdline: Some(args),
        cmdline_append: None,
        mem_mib: machine.mem_size_mib,
        cpus: machine.vcpu_count,
        hugepages: machine.huge_pages == "2M" || base.hugepages,
        disks,
        nets,
        vsock,
        ..base.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_kernel() -> (FullConfig, vmm_sys_util::tempfile::TempFile) {
        let kernel = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let full = FullConfig {
            boot_source: Some(BootSource {
                kernel_image_path: kernel.as_path().display().to_string(),
                initrd_path: None,
                boot_args: Some("console=ttyS0".into()),
            }),
            ..FullConfig::default()
        };
        (full, kernel)
    }

    fn drive(id: &str, file: &vmm_sys_util::tempfile::TempFile, root: bool) -> Drive {
        Drive {
            drive_id: id.into(),
            path_on_host: Some(file.as_path().display().to_string()),
            is_root_device: root,
            is_read_only: Some(false),
            partuuid: None,
            cache_type: None,
            io_engine: None,
            rate_limiter: None,
            socket: None,
        }
    }

    #[test]
    fn firecracker_defaults_and_the_root_drive_first() {
        let (mut full, _kernel) = with_kernel();
        let (a, b) = (
            vmm_sys_util::tempfile::TempFile::new().unwrap(),
            vmm_sys_util::tempfile::TempFile::new().unwrap(),
        );
        full.drives = vec![drive("data", &a, false), drive("rootfs", &b, true)];
        let vm = vm_config(&full, &VmConfig::new("ignored")).unwrap();
        assert_eq!((vm.cpus, vm.mem_mib), (1, 128));
        assert_eq!(vm.disks[0].path, b.as_path());
        assert_eq!(vm.disks[0].id.as_deref(), Some("rootfs"));
        assert_eq!(vm.disks[1].path, a.as_path());
        assert_eq!(
            vm.cmdline.as_deref(),
            Some("console=ttyS0 root=/dev/vda rw")
        );
    }

    #[test]
    fn what_rvmm_cannot_do_is_refused_by_name() {
        let (mut full, _kernel) = with_kernel();
        full.balloon = Some(serde_json::json!({"amount_mib": 1}));
        assert_eq!(
            vm_config(&full, &VmConfig::new("k")),
            Err(ApiConfigError::Unsupported("a balloon device"))
        );
        let machine = MachineConfig {
            smt: true,
            ..MachineConfig::default()
        };
        assert!(matches!(
            check_machine(&machine),
            Err(ApiConfigError::VcpuCount { .. })
        ));
        let (full, _kernel) = with_kernel();
        let two = [
            vmm_sys_util::tempfile::TempFile::new().unwrap(),
            vmm_sys_util::tempfile::TempFile::new().unwrap(),
        ];
        let full = FullConfig {
            drives: vec![drive("r1", &two[0], true), drive("r2", &two[1], true)],
            ..full
        };
        assert_eq!(
            vm_config(&full, &VmConfig::new("k")),
            Err(ApiConfigError::TwoRoots("r1".into()))
        );
        assert_eq!(
            vm_config(&FullConfig::default(), &VmConfig::new("k")),
            Err(ApiConfigError::NoKernel)
        );
    }
}
