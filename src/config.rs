//! The plain description of a VM that the command line turns into. Nothing
//! here knows about clap.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::boot::cmdline::DEFAULT_CMDLINE;

pub const DEFAULT_MEM_MIB: u64 = 512;
pub const DEFAULT_CPUS: u8 = 1;
/// How long SIGTERM waits for the guest to shut down after Ctrl-Alt-Del.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to build and run one VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// bzImage or ELF vmlinux (with or without a PVH note).
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Replaces [`DEFAULT_CMDLINE`] when given.
    pub cmdline: Option<String>,
    /// Added to the end of the command line (the default or `cmdline`).
    pub cmdline_append: Option<String>,
    pub mem_mib: u64,
    pub cpus: u8,
    /// Ask the host to back guest memory with transparent huge pages.
    pub hugepages: bool,
    /// Block devices, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// Log boot times when the guest writes to the boot timer.
    pub boot_timer: bool,
    /// Confine each thread with a seccomp filter before the guest runs. The
    /// filter stays on the calling thread after `run` returns.
    pub seccomp: bool,
    /// On SIGTERM, how long the guest has to shut down after rvmm presses
    /// Ctrl-Alt-Del before it is stopped hard; zero stops it at once.
    pub stop_timeout: Duration,
    /// Where the guest's serial console goes.
    pub serial: SerialConfig,
    /// Network cards, after the disks in the device order.
    pub nets: Vec<NetConfig>,
    /// The vsock device, after the cards.
    pub vsock: Option<VsockConfig>,
}

/// One `--vsock cid=N,uds=PATH`: the guest's context ID, and the Unix
/// socket where host programs connect (guest connections to host port P
/// go to `PATH_P`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    pub cid: u32,
    pub uds: PathBuf,
}

/// `PATH_P` must fit a socket address for every port P.
const MAX_VSOCK_PATH: usize =
    rvmm_devices::virtio::vsock::muxer::MAX_SOCKET_PATH - "_4294967295".len();

impl std::str::FromStr for VsockConfig {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (mut cid, mut uds) = (None, None);
        for option in split_options(spec) {
            match option.split_once('=') {
                Some(("cid", text)) => {
                    let min = rvmm_devices::virtio::vsock::MIN_GUEST_CID;
                    cid = Some(
                        text.parse::<u32>()
                            .ok()
                            .filter(|&c| c >= min && c != u32::MAX)
                            .ok_or_else(|| ConfigError::VsockCid(text.to_string()))?,
                    );
                }
                Some(("uds", path)) if !path.is_empty() => {
                    if path.len() > MAX_VSOCK_PATH {
                        return Err(ConfigError::VsockPathTooLong {
                            path: path.to_string(),
                            max: MAX_VSOCK_PATH,
                        });
                    }
                    uds = Some(PathBuf::from(path));
                }
                _ => return Err(ConfigError::VsockOption(option)),
            }
        }
        match (cid, uds) {
            (Some(cid), Some(uds)) => Ok(VsockConfig { cid, uds }),
            _ => Err(ConfigError::VsockIncomplete),
        }
    }
}

/// One `--net tap=NAME[,mac=MAC][,id=STR]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: String,
    pub mac: Option<[u8; 6]>,
    pub id: Option<String>,
}

/// Linux's limit on interface names, with the terminating NUL.
const IFNAMSIZ: usize = 16;

impl std::str::FromStr for NetConfig {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (mut tap, mut mac, mut id) = (None, None, None);
        for option in split_options(spec) {
            match option.split_once('=') {
                Some(("tap", name)) => {
                    let valid = !name.is_empty()
                        && name.len() < IFNAMSIZ
                        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
                    if !valid {
                        return Err(ConfigError::TapName(name.to_string()));
                    }
                    tap = Some(name.to_string());
                }
                Some(("mac", text)) => mac = Some(parse_mac(text)?),
                Some(("id", text)) if !text.is_empty() => id = Some(text.to_string()),
                _ => return Err(ConfigError::NetOption(option)),
            }
        }
        let tap = tap.ok_or(ConfigError::NetWithoutTap)?;
        Ok(NetConfig { tap, mac, id })
    }
}

/// `aa:bb:cc:dd:ee:ff`, a unicast address.
fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || ConfigError::Mac(text.to_string());
    let bytes: Vec<u8> = text
        .split(':')
        .map(|part| {
            (part.len() == 2)
                .then(|| u8::from_str_radix(part, 16).ok())
                .flatten()
                .ok_or_else(bad)
        })
        .collect::<Result<_, _>>()?;
    let mac: [u8; 6] = bytes.try_into().map_err(|_| bad())?;
    if mac[0] & 1 != 0 {
        return Err(bad());
    }
    Ok(mac)
}

/// `--serial stdio|file=PATH|socket=PATH|off`: the guest console on rvmm's
/// stdin and stdout, written to a file (no input), on a Unix socket's
/// client, or discarded (no input).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialConfig {
    #[default]
    Stdio,
    File(PathBuf),
    Socket(PathBuf),
    Off,
}

impl std::str::FromStr for SerialConfig {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        match spec.split_once('=') {
            None if spec == "stdio" => Ok(SerialConfig::Stdio),
            None if spec == "off" => Ok(SerialConfig::Off),
            Some(("file", path)) if !path.is_empty() => Ok(SerialConfig::File(path.into())),
            Some(("socket", path)) if !path.is_empty() => Ok(SerialConfig::Socket(path.into())),
            _ => Err(ConfigError::Serial(spec.to_string())),
        }
    }
}

/// One `--disk PATH[,ro][,id=STR]`. A comma inside the path or the ID is
/// written twice (`a,,b.img` is `a,b.img`), as QEMU's option syntax has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// What the guest reads with GET_ID (at most 20 bytes).
    pub id: Option<String>,
}

impl std::str::FromStr for DiskConfig {
    type Err = ConfigError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let mut parts = split_options(spec).into_iter();
        let path = parts
            .next()
            .filter(|p| !p.is_empty())
            .ok_or(ConfigError::DiskWithoutPath)?;
        let mut disk = DiskConfig {
            path: path.into(),
            read_only: false,
            id: None,
        };
        for option in parts {
            match option.split_once('=') {
                None if option == "ro" => disk.read_only = true,
                Some(("id", id)) if !id.is_empty() => disk.id = Some(id.to_string()),
                _ => return Err(ConfigError::DiskOption(option)),
            }
        }
        Ok(disk)
    }
}

/// Splits `spec` at single commas; a doubled comma stands for one comma.
fn split_options(spec: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ',' if chars.peek() == Some(&',') => {
                chars.next();
                parts.last_mut().expect("never empty").push(',');
            }
            ',' => parts.push(String::new()),
            c => parts.last_mut().expect("never empty").push(c),
        }
    }
    parts
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--cpus must be at least 1")]
    NoCpus,
    #[error("--cpus {wanted} is more than this host's KVM allows ({max})")]
    TooManyCpusForKvm { wanted: u8, max: usize },
    #[error("--cpus {wanted} is more than rvmm's firmware tables can describe ({max})")]
    TooManyCpusForTables { wanted: u8, max: usize },
    #[error("--disk needs a path: --disk PATH[,ro][,id=STR] (write a comma in PATH as ,,)")]
    DiskWithoutPath,
    #[error("--disk option '{0}' is not known; use --disk PATH[,ro][,id=STR] (write a comma in PATH as ,,)")]
    DiskOption(String),
    #[error("--serial '{0}' is not known; use --serial stdio, file=PATH, socket=PATH or off")]
    Serial(String),
    #[error(
        "{given} disks, network cards and vsock devices given; rvmm supports at most {max} devices"
    )]
    TooManyDevices { given: usize, max: usize },
    #[error("--net needs a tap: --net tap=NAME[,mac=MAC][,id=STR]")]
    NetWithoutTap,
    #[error("--net option '{0}' is not known; use --net tap=NAME[,mac=MAC][,id=STR]")]
    NetOption(String),
    #[error("tap name '{0}' is not an interface name (1 to 15 printable characters, no '/')")]
    TapName(String),
    #[error("MAC address '{0}' is not a unicast address written as aa:bb:cc:dd:ee:ff")]
    Mac(String),
    #[error("--vsock needs both: --vsock cid=N,uds=PATH")]
    VsockIncomplete,
    #[error("--vsock option '{0}' is not known; use --vsock cid=N,uds=PATH")]
    VsockOption(String),
    #[error("--vsock cid={0} is not a guest context ID; use a number from 3 to 4294967294")]
    VsockCid(String),
    #[error("--vsock uds={path} is longer than {max} bytes, too long for the sockets rvmm makes from it (PATH_PORT); give a shorter path")]
    VsockPathTooLong { path: String, max: usize },
}

impl VmConfig {
    /// A VM with the default memory, CPUs and command line.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initrd: None,
            cmdline: None,
            cmdline_append: None,
            mem_mib: DEFAULT_MEM_MIB,
            cpus: DEFAULT_CPUS,
            hugepages: false,
            disks: Vec::new(),
            boot_timer: false,
            seccomp: true,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            serial: SerialConfig::Stdio,
            nets: Vec::new(),
            vsock: None,
        }
    }

    /// The command line before rvmm adds its own arguments: `cmdline` or
    /// the default, then `cmdline_append`.
    pub fn base_cmdline(&self) -> String {
        let base = self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
        match self.cmdline_append.as_deref().map(str::trim) {
            Some(extra) if !extra.is_empty() => format!("{base} {extra}"),
            _ => base.to_string(),
        }
    }

    /// Checks the vCPU count against the host KVM's limit and the most the
    /// firmware tables (MP table, MADT) can list.
    pub fn check_cpus(&self, kvm_max: usize, tables_max: usize) -> Result<(), ConfigError> {
        let wanted = self.cpus;
        match usize::from(wanted) {
            0 => Err(ConfigError::NoCpus),
            n if n > kvm_max => Err(ConfigError::TooManyCpusForKvm {
                wanted,
                max: kvm_max,
            }),
            n if n > tables_max => Err(ConfigError::TooManyCpusForTables {
                wanted,
                max: tables_max,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = VmConfig::new("k");
        assert_eq!((c.mem_mib, c.cpus), (512, 1));
        // The default the README documents.
        assert_eq!(
            c.base_cmdline(),
            "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd"
        );
        let c = VmConfig {
            cmdline: Some("quiet".into()),
            ..c
        };
        assert_eq!(c.base_cmdline(), "quiet");
    }

    #[test]
    fn disk_specs() {
        let d: DiskConfig = "img.raw".parse().unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "img.raw".into(),
                read_only: false,
                id: None
            }
        );
        let d: DiskConfig = "/dev/sdb,ro,id=data-1".parse().unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/dev/sdb".into(),
                read_only: true,
                id: Some("data-1".into())
            }
        );
        assert_eq!("".parse::<DiskConfig>(), Err(ConfigError::DiskWithoutPath));
        assert_eq!(
            ",ro".parse::<DiskConfig>(),
            Err(ConfigError::DiskWithoutPath)
        );
        assert_eq!(
            "a,rw".parse::<DiskConfig>(),
            Err(ConfigError::DiskOption("rw".into()))
        );
        assert_eq!(
            "a,id=".parse::<DiskConfig>(),
            Err(ConfigError::DiskOption("id=".into()))
        );
        // Doubled commas belong to the path or ID.
        let d: DiskConfig = "disks/a,,b.img,,,ro,id=x,,y".parse().unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "disks/a,b.img,".into(),
                read_only: true,
                id: Some("x,y".into())
            }
        );
    }

    #[test]
    fn cmdline_append_goes_after_the_default_or_the_given_line() {
        let mut c = VmConfig::new("k");
        c.cmdline_append = Some("root=/dev/vda rw".into());
        assert_eq!(
            c.base_cmdline(),
            "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd root=/dev/vda rw"
        );
        c.cmdline = Some("console=ttyS0".into());
        assert_eq!(c.base_cmdline(), "console=ttyS0 root=/dev/vda rw");
    }

    #[test]
    fn net_specs() {
        let n: NetConfig = "tap=tap0".parse().unwrap();
        assert_eq!(
            n,
            NetConfig {
                tap: "tap0".into(),
                mac: None,
                id: None
            }
        );
        let n: NetConfig = "tap=vm1,mac=06:00:AC:10:00:02,id=eth0".parse().unwrap();
        assert_eq!(n.mac, Some([6, 0, 0xac, 0x10, 0, 2]));
        assert_eq!(n.id.as_deref(), Some("eth0"));
        assert_eq!(
            "mac=06:00:00:00:00:01".parse::<NetConfig>(),
            Err(ConfigError::NetWithoutTap)
        );
        assert_eq!(
            "tap=a,ro".parse::<NetConfig>(),
            Err(ConfigError::NetOption("ro".into()))
        );
        for bad in ["tap=", "tap=sixteen-chars-xy", "tap=a/b", "tap=a b"] {
            assert!(
                matches!(bad.parse::<NetConfig>(), Err(ConfigError::TapName(_))),
                "{bad}"
            );
        }
        for bad in [
            "01:00:00:00:00:01",
            "06:00:00:00:00",
            "06:00:00:00:00:0g",
            "6:0:0:0:0:1",
        ] {
            assert_eq!(
                format!("tap=t,mac={bad}").parse::<NetConfig>(),
                Err(ConfigError::Mac(bad.into()))
            );
        }
    }

    #[test]
    fn vsock_specs() {
        let parsed: VsockConfig = "cid=3,uds=/tmp/v.sock".parse().unwrap();
        assert_eq!(
            parsed,
            VsockConfig {
                cid: 3,
                uds: "/tmp/v.sock".into()
            }
        );
        let comma: VsockConfig = "uds=a,,b,cid=4294967294".parse().unwrap();
        assert_eq!((comma.cid, comma.uds), (u32::MAX - 1, "a,b".into()));
        for (spec, error) in [
            ("cid=3", ConfigError::VsockIncomplete),
            ("uds=/tmp/v", ConfigError::VsockIncomplete),
            ("cid=2,uds=v", ConfigError::VsockCid("2".into())),
            (
                "cid=4294967295,uds=v",
                ConfigError::VsockCid("4294967295".into()),
            ),
            ("cid=x,uds=v", ConfigError::VsockCid("x".into())),
            (
                "cid=3,uds=v,port=1",
                ConfigError::VsockOption("port=1".into()),
            ),
            ("cid=3,uds=", ConfigError::VsockOption("uds=".into())),
        ] {
            assert_eq!(spec.parse::<VsockConfig>(), Err(error), "{spec}");
        }
        let long = format!("cid=3,uds={}", "x".repeat(97));
        assert!(matches!(
            long.parse::<VsockConfig>(),
            Err(ConfigError::VsockPathTooLong { max: 96, .. })
        ));
        assert!(format!("cid=3,uds={}", "x".repeat(96))
            .parse::<VsockConfig>()
            .is_ok());
    }

    #[test]
    fn serial_specs() {
        assert_eq!("stdio".parse(), Ok(SerialConfig::Stdio));
        assert_eq!("off".parse(), Ok(SerialConfig::Off));
        assert_eq!(
            "file=/tmp/a=b".parse(),
            Ok(SerialConfig::File("/tmp/a=b".into()))
        );
        assert_eq!(
            "socket=/run/vm.sock".parse(),
            Ok(SerialConfig::Socket("/run/vm.sock".into()))
        );
        for bad in ["", "file", "file=", "tty", "socket=", "pty", "stdio=1"] {
            assert_eq!(
                bad.parse::<SerialConfig>(),
                Err(ConfigError::Serial(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cpu_limits() {
        let c = VmConfig {
            cpus: 0,
            ..VmConfig::new("k")
        };
        assert_eq!(c.check_cpus(8, 254), Err(ConfigError::NoCpus));
        let c = VmConfig {
            cpus: 9,
            ..VmConfig::new("k")
        };
        assert_eq!(
            c.check_cpus(8, 254),
            Err(ConfigError::TooManyCpusForKvm { wanted: 9, max: 8 })
        );
        assert_eq!(
            c.check_cpus(1024, 4),
            Err(ConfigError::TooManyCpusForTables { wanted: 9, max: 4 })
        );
        assert!(VmConfig::new("k").check_cpus(1, 1).is_ok());
    }
}
