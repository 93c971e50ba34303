//! The systems compared, and how each is told to run a guest: rvmm, QEMU's
//! microvm machine, Firecracker (RVMM_BENCH_FIRECRACKER, or the unmodified
//! release binary in `../shared/peers/` beside the checkout) and, for the
//! container columns, runc (crun refuses hosts with hybrid cgroups, which
//! these are) and Docker Engine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::docker::Docker;

#[derive(Clone, Debug)]
pub enum Peer {
    Rvmm,
    Qemu,
    Firecracker(PathBuf),
    /// runc, at this path.
    Container(PathBuf),
    Docker(Arc<Docker>),
}

impl Peer {
    pub fn name(&self) -> &'static str {
        match self {
            Peer::Rvmm => "rvmm",
            Peer::Qemu => "qemu-microvm",
            Peer::Firecracker(_) => "firecracker",
            Peer::Container(_) => "runc container",
            Peer::Docker(_) => "docker container",
        }
    }

    pub fn is_vm(&self) -> bool {
        !matches!(self, Peer::Container(_) | Peer::Docker(_))
    }
}

/// What to boot.
pub struct VmSpec<'a> {
    pub kernel: &'a Path,
    pub mem_mib: u64,
    pub cmdline: &'a str,
    pub disks: &'a [PathBuf],
    pub initrd: Option<&'a Path>,
    /// A virtio-net card on this tap with this MAC.
    pub net: Option<(&'a str, &'a str)>,
}

/// Where QEMU is: Debian's, or the copy the lab benchmark puts in L1.
pub const QEMU: &str = "/usr/bin/qemu-system-x86_64";

/// A command that boots `spec` on `peer`, with the console on stdout.
/// `scratch` is a directory the peer may write its configuration to.
pub fn vm_command(peer: &Peer, spec: &VmSpec, scratch: &Path) -> Command {
    vm_command_timed(peer, spec, scratch, false)
}

/// As [`vm_command`]; with `boot_timer`, rvmm and Firecracker get their
/// boot-timer device and log when the guest writes to it (Firecracker at
/// Info level, on stdout).
pub fn vm_command_timed(peer: &Peer, spec: &VmSpec, scratch: &Path, boot_timer: bool) -> Command {
    let mem = spec.mem_mib.to_string();
    match peer {
        Peer::Rvmm => {
            let mut c = Command::new(crate::common::rvmm_binary());
            c.args([
                "--kernel",
                &spec.kernel.display().to_string(),
                "--mem",
                &mem,
                "--cmdline",
                spec.cmdline,
            ]);
            for d in spec.disks {
                c.arg("--disk").arg(d);
            }
            if let Some(initrd) = spec.initrd {
                c.arg("--initrd").arg(initrd);
            }
            if let Some((tap, mac)) = spec.net {
                c.arg("--net").arg(format!("tap={tap},mac={mac}"));
            }
            if boot_timer {
                c.arg("--boot-timer");
            }
            c
        }
        Peer::Qemu => {
            let mut c = Command::new(QEMU);
            c.args(["-M", "microvm", "-enable-kvm", "-m", &mem, "-smp", "1"])
                .args([
                    "-nodefaults",
                    "-no-user-config",
                    "-display",
                    "none",
                    "-serial",
                    "stdio",
                    "-no-reboot",
                ])
                .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
                // virtio 1.x transports, as rvmm and Firecracker have.
                .args(["-global", "virtio-mmio.force-legacy=false"])
                .arg("-kernel")
                .arg(spec.kernel)
                .args(["-append", spec.cmdline]);
            if let Some(initrd) = spec.initrd {
                c.arg("-initrd").arg(initrd);
            }
            for (i, d) in spec.disks.iter().enumerate() {
                c.arg("-drive")
                    .arg(format!(
                        "id=d{i},file={},format=raw,if=none,cache=writeback",
                        d.display()
                    ))
                    .args(["-device", &format!("virtio-blk-device,drive=d{i}")]);
            }
            if let Some((tap, mac)) = spec.net {
                c.arg("-netdev")
                    .arg(format!(
                        "tap,id=n0,ifname={tap},script=no,downscript=no,vnet_hdr=on"
                    ))
                    .arg("-device")
                    .arg(format!("virtio-net-device,netdev=n0,mac={mac}"));
            }
            c
        }
        Peer::Firecracker(bin) => {
            let drives: Vec<String> = spec
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    format!(
                        r#"{{"drive_id":"vd{i}","path_on_host":"{}","is_root_device":false,"is_read_only":false}}"#,
                        d.display()
                    )
                })
                .collect();
            let initrd = spec
                .initrd
                .map(|i| format!(r#","initrd_path":"{}""#, i.display()))
                .unwrap_or_default();
            let nets = spec
                .net
                .map(|(tap, mac)| {
                    format!(r#"{{"iface_id":"eth0","guest_mac":"{mac}","host_dev_name":"{tap}"}}"#)
                })
                .unwrap_or_default();
            let config = format!(
                r#"{{"boot-source":{{"kernel_image_path":"{}","boot_args":"{}"{initrd}}},"drives":[{}],"network-interfaces":[{nets}],"machine-config":{{"vcpu_count":1,"mem_size_mib":{}}}}}"#,
                spec.kernel.display(),
                spec.cmdline,
                drives.join(","),
                spec.mem_mib
            );
            let path = scratch.join(format!("firecracker-{}.json", unique()));
            std::fs::write(&path, config).unwrap();
            let mut c = Command::new(bin);
            let level = if boot_timer { "Info" } else { "Error" };
            c.args(["--no-api", "--level", level]);
            if boot_timer {
                c.arg("--boot-timer");
            }
            c.arg("--config-file").arg(path);
            c
        }
        Peer::Container(_) | Peer::Docker(_) => unreachable!("containers do not boot kernels"),
    }
}

/// A name no other run of this bench process has used.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// An OCI bundle with a busybox root, for runc.
pub struct Bundle {
    pub dir: PathBuf,
}

impl Bundle {
    /// A bundle running `args` when `peer` is a container runtime; None for VMs.
    pub fn for_peer(peer: &Peer, scratch: &Path, args: &[&str]) -> Option<Bundle> {
        match peer {
            Peer::Container(runtime) => Bundle::new(runtime, scratch, args),
            _ => None,
        }
    }

    /// Makes a bundle whose process runs `args`.
    pub fn new(runtime: &Path, scratch: &Path, args: &[&str]) -> Option<Bundle> {
        let dir = scratch.join(format!("bundle-{}", unique()));
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).ok()?;
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).ok()?;
        let ok = Command::new(runtime)
            .arg("spec")
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .ok()?;
        if !ok.success() {
            return None;
        }
        let spec_path = dir.join("config.json");
        let spec = std::fs::read_to_string(&spec_path).ok()?;
        // JSON strings: a shell line's own quotes must be escaped.
        let quoted: Vec<String> = args
            .iter()
            .map(|a| serde_json::to_string(a).unwrap())
            .collect();
        let spec = spec
            .replace("\"terminal\": true", "\"terminal\": false")
            .replace("\"sh\"", &quoted.join(", "));
        std::fs::write(spec_path, spec).ok()?;
        Some(Bundle { dir })
    }

    pub fn rootfs_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join("rootfs/bin/busybox"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// `runc run` of this bundle under a fresh container name.
    pub fn run_command(&self, runtime: &Path) -> Command {
        let mut c = Command::new(runtime);
        c.args(["run", "--bundle"])
            .arg(&self.dir)
            .arg(format!("rvmm-bench-{}", unique()));
        c
    }
}

/// Installs a Debian package if `probe` is missing. Returns whether `probe` exists after.
pub fn ensure_package(package: &str, probe: &str) -> bool {
    if Path::new(probe).exists() {
        return true;
    }
    eprintln!("bench setup: installing {package} (Debian) for the comparison");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    Path::new(probe).exists()
}

/// The Firecracker binary: RVMM_BENCH_FIRECRACKER, else the project's peer
/// binary beside the checkout, with its version said.
pub fn firecracker() -> Result<PathBuf, String> {
    let bin: PathBuf = match std::env::var_os("RVMM_BENCH_FIRECRACKER") {
        Some(bin) => bin.into(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/firecracker"),
    };
    if !bin.is_file() {
        return Err(format!(
            "no Firecracker at {} (set RVMM_BENCH_FIRECRACKER=/path/to/firecracker)",
            bin.display()
        ));
    }
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    eprintln!("bench setup: Firecracker is {} ({version})", bin.display());
    Ok(bin)
}

/// The systems available on this host, rvmm first. Docker is set up (its
/// daemon started, its image imported) only `with_docker`, when a section
/// that runs containers will run; `scratch` holds what its setup writes.
pub fn available(scratch: &Path, with_docker: bool) -> Vec<Peer> {
    let mut peers = vec![Peer::Rvmm];
    if ensure_package("qemu-system-x86", QEMU) {
        peers.push(Peer::Qemu);
    } else {
        eprintln!("bench setup: QEMU is not available; its column is left out");
    }
    match firecracker() {
        Ok(bin) => peers.push(Peer::Firecracker(bin)),
        Err(why) => eprintln!("bench setup: {why}; Firecracker left out"),
    }
    if ensure_package("runc", "/usr/sbin/runc") {
        peers.push(Peer::Container("/usr/sbin/runc".into()));
    } else {
        eprintln!("bench setup: runc is not available; the container column is left out");
    }
    if with_docker {
        match Docker::set_up(scratch) {
            Ok(docker) => peers.push(Peer::Docker(Arc::new(docker))),
            Err(why) => eprintln!("bench setup: {why}; Docker left out"),
        }
    }
    peers
}
