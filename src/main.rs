//! The `rvmm` command: parse the command line, run the VM, exit with its status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rvmm::config::{DiskConfig, VmConfig, DEFAULT_CMDLINE};
use rvmm::StopReason;

/// Boot a Linux kernel (or any PVH or 64-bit ELF guest) in a KVM microVM.
///
/// The guest's serial console (COM1) is rvmm's stdin and stdout (see
/// --serial); logs go to stderr (see --log-path, --log-level, RUST_LOG). On a terminal, press
/// Ctrl-A then x to quit. rvmm exits 0 when the guest resets or powers off.
/// SIGTERM asks the guest to shut down (Ctrl-Alt-Del) and stops it hard
/// after --stop-timeout: exit 0 if the guest shut down, 143 if stopped.
#[derive(Debug, Parser)]
#[command(name = "rvmm", version, after_help = after_help())]
struct Cli {
    /// Guest kernel: a bzImage, an ELF vmlinux, or an ELF with a PVH entry
    /// note. The format is read from the file's content. Required unless
    /// --config-file or --api-sock gives the VM instead.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["config_file", "api_sock"])]
    kernel: Option<PathBuf>,

    /// Initial ramdisk (initramfs) to hand to the kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Kernel command line; replaces the default (shown below). On PVM-backed
    /// hosts rvmm appends the flags Linux needs there and logs them.
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,

    /// Arguments to add at the end of the kernel command line (the default
    /// or --cmdline), e.g. "root=/dev/vda rw".
    #[arg(long, value_name = "STR")]
    cmdline_append: Option<String>,

    /// Guest memory in MiB (at least 16).
    #[arg(long, value_name = "MiB", default_value_t = rvmm::config::DEFAULT_MEM_MIB)]
    mem: u64,

    /// Number of vCPUs, one host thread each.
    #[arg(long, value_name = "N", default_value_t = rvmm::config::DEFAULT_CPUS)]
    cpus: u8,

    /// Serve Firecracker's REST API on the Unix socket PATH (HTTP/1.1, its
    /// request and response bodies): configure the VM with PUT requests and
    /// start it with InstanceStart, as tools written for Firecracker do.
    #[arg(long, value_name = "PATH", conflicts_with_all = VM_FLAGS)]
    api_sock: Option<PathBuf>,

    /// Boot the VM Firecracker's JSON configuration FILE describes
    /// (boot-source, drives, machine-config, network-interfaces, vsock,
    /// logger), instead of --kernel and the other VM flags. With --api-sock
    /// the VM starts at once and the API serves it.
    #[arg(long, value_name = "FILE", conflicts_with_all = VM_FLAGS)]
    config_file: Option<PathBuf>,

    /// No API socket (Firecracker's flag; rvmm serves one only with
    /// --api-sock). Needs --config-file.
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    no_api: bool,

    /// Back guest memory with transparent huge pages (madvise), which cuts
    /// page faults and TLB misses; needs THP "madvise" or "always" on the host.
    #[arg(long)]
    hugepages: bool,

    /// A virtio-blk disk: a raw image file or host block device. Repeat for
    /// more; the guest sees them in order as /dev/vda, /dev/vdb, ... `ro`
    /// opens it read-only; `id` sets the ID the guest reads (20 bytes at
    /// most). A disk is locked while in use: another rvmm cannot write it.
    /// Write a comma inside PATH or STR as two commas.
    #[arg(long = "disk", value_name = "PATH[,ro][,id=STR]")]
    disks: Vec<String>,

    /// A virtio-net card on the tap device NAME, repeatable. rvmm creates
    /// the tap (removed on exit) when it does not exist and rvmm may;
    /// `mac` defaults to a locally administered address derived from NAME.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC][,id=STR]")]
    nets: Vec<String>,

    /// A virtio-vsock device for guest context ID N, as Firecracker's: a
    /// host program connects to the Unix socket PATH (rvmm listens there)
    /// and writes "CONNECT <port>\n" to reach the guest's port, then reads
    /// "OK <host port>\n"; a guest connection to the host (CID 2) port P
    /// goes to the socket PATH_P, where a host program listens.
    #[arg(long, value_name = "cid=N,uds=PATH")]
    vsock: Option<String>,

    /// Enable the boot timer: when the guest writes 123 to the byte at
    /// 0xd0000000 (as Firecracker's), log at info level the time since rvmm
    /// started (wall and CPU) and since the guest first ran.
    #[arg(long)]
    boot_timer: bool,

    /// On SIGTERM, seconds the guest has to shut down after rvmm presses
    /// Ctrl-Alt-Del on its i8042 keyboard (its init decides what that does:
    /// busybox and systemd reboot in order). rvmm stops it hard when that
    /// time is up or a second signal comes, and at once with 0 or when the
    /// guest has no keyboard driver.
    #[arg(long, value_name = "SECS", default_value_t = rvmm::config::DEFAULT_STOP_TIMEOUT.as_secs_f64())]
    stop_timeout: f64,

    /// Where the guest's serial console (COM1) goes: `stdio` (rvmm's stdin
    /// and stdout), `file=PATH` (written to PATH, created or truncated; no
    /// input), `socket=PATH` (a Unix socket rvmm listens on: one client at
    /// a time reads the output, earlier output included, and types the
    /// input), or `off` (discarded; no input).
    #[arg(
        long,
        value_name = "stdio|file=PATH|socket=PATH|off",
        default_value = "stdio"
    )]
    serial: String,

    /// Append rvmm's log to PATH instead of writing it to stderr.
    #[arg(long, value_name = "PATH")]
    log_path: Option<PathBuf>,

    /// Log level: off, error, warn (the default), info, debug or trace.
    /// Overrides RUST_LOG, which also takes per-module levels.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,

    /// Run without the per-thread seccomp filters (for debugging only).
    #[arg(long)]
    no_seccomp: bool,
}

/// The flags that describe the VM, which --config-file and --api-sock replace.
const VM_FLAGS: [&str; 9] = [
    "kernel",
    "initrd",
    "cmdline",
    "cmdline_append",
    "mem",
    "cpus",
    "disks",
    "nets",
    "vsock",
];

fn after_help() -> String {
    format!("Default kernel command line:\n  {DEFAULT_CMDLINE}")
}

/// Sets up logging as --log-path, --log-level and RUST_LOG ask.
fn init_logging(path: Option<&std::path::Path>, level: Option<&str>) -> Result<(), String> {
    // virtio-queue logs errors about queues a guest set up wrong; a hostile
    // guest must not be able to flood the host's logs through it.
    const QUIET: &str = "virtio_queue=off";
    let level = level
        .map(|level| {
            rvmm::log_target::parse_level(level).ok_or_else(|| {
                format!("--log-level '{level}' is not a level; use off, error, warn, info, debug or trace")
            })
        })
        .transpose()?;
    // RUST_LOG's per-module levels stand unless --log-level is given; else
    // the level is log's global one, which the API's PUT /logger may change.
    let from_env = level.is_none() && std::env::var_os("RUST_LOG").is_some();
    let mut builder = if from_env {
        env_logger::Builder::from_env(env_logger::Env::default())
    } else {
        let mut builder = env_logger::Builder::new();
        builder.parse_filters(&format!("trace,{QUIET}"));
        builder
    };
    if let Some(path) = path {
        rvmm::log_target::set_path(path).map_err(|e| {
            format!(
                "cannot open --log-path '{}': {e}; give a writable path",
                path.display()
            )
        })?;
    }
    builder
        .target(env_logger::Target::Pipe(Box::new(
            rvmm::log_target::LogWriter,
        )))
        .format_timestamp_micros()
        .init();
    if !from_env {
        log::set_max_level(level.unwrap_or(log::LevelFilter::Warn));
    }
    Ok(())
}

fn main() -> ExitCode {
    rvmm::vmm::mark_process_start();
    rvmm::heap::one_arena();
    // SAFETY: getuid/geteuid/getgid/getegid only read the process's IDs.
    let setid = unsafe { libc::getuid() != libc::geteuid() || libc::getgid() != libc::getegid() };
    if setid {
        eprintln!("rvmm: error: rvmm refuses to run set-user-ID or set-group-ID; run it as the user who owns the VM");
        return ExitCode::FAILURE;
    }
    match launch_from_args() {
        Ok(Launch::Run(config)) => stopped(rvmm::run(&config)),
        Ok(Launch::Api {
            socket,
            config_file,
            base,
        }) => serve_api(&socket, config_file.as_deref(), base),
        Err(e) => {
            eprintln!("rvmm: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the command line asks for.
enum Launch {
    /// One VM, from the flags and any `--config-file`.
    Run(VmConfig),
    /// An API server on `socket` that builds the VMs it is sent.
    Api {
        socket: std::path::PathBuf,
        config_file: Option<std::path::PathBuf>,
        base: VmConfig,
    },
}

/// Parses the command line (and logging set up from it). Never inlined:
/// its frame, kilobytes for clap's parse, has ended before the VM runs,
/// so the main thread's stack stays small while it serves the VM.
#[inline(never)]
fn launch_from_args() -> Result<Launch, String> {
    let cli = Cli::parse();
    init_logging(cli.log_path.as_deref(), cli.log_level.as_deref()).map_err(|e| e.to_string())?;
    let serial = cli
        .serial
        .parse::<rvmm::config::SerialConfig>()
        .map_err(|e| e.to_string())?;
    let disks = cli
        .disks
        .iter()
        .map(|d| d.parse())
        .collect::<Result<Vec<DiskConfig>, _>>()
        .map_err(|e| e.to_string())?;
    let stop_timeout = match std::time::Duration::try_from_secs_f64(cli.stop_timeout) {
        Ok(timeout) if timeout <= std::time::Duration::from_secs(3600) => timeout,
        _ => {
            return Err(format!(
                "--stop-timeout {} is not a number of seconds from 0 to 3600",
                cli.stop_timeout
            ))
        }
    };
    let nets = cli
        .nets
        .iter()
        .map(|n| n.parse())
        .collect::<Result<Vec<rvmm::config::NetConfig>, _>>()
        .map_err(|e| e.to_string())?;
    let vsock = cli
        .vsock
        .as_deref()
        .map(str::parse::<rvmm::config::VsockConfig>)
        .transpose()
        .map_err(|e| e.to_string())?;
    let config = VmConfig {
        kernel: cli.kernel.unwrap_or_default(),
        initrd: cli.initrd,
        cmdline: cli.cmdline,
        cmdline_append: cli.cmdline_append,
        mem_mib: cli.mem,
        cpus: cli.cpus,
        hugepages: cli.hugepages,
        disks,
        boot_timer: cli.boot_timer,
        seccomp: !cli.no_seccomp,
        stop_timeout,
        serial,
        nets,
        vsock,
    };
    if let Some(socket) = cli.api_sock {
        return Ok(Launch::Api {
            socket,
            config_file: cli.config_file,
            base: config,
        });
    }
    match &cli.config_file {
        Some(file) => config_from_file(file, &config).map(Launch::Run),
        None => Ok(Launch::Run(config)),
    }
}

/// The exit status for how the VM ended, saying why when it is an error.
fn stopped(result: Result<StopReason, rvmm::VmmError>) -> ExitCode {
    match result {
        Ok(reason) => {
            if let StopReason::Error(message) = &reason {
                eprintln!("rvmm: error: {message}");
            }
            ExitCode::from(reason.exit_code() as u8)
        }
        Err(e) => {
            eprintln!("rvmm: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The VM a Firecracker configuration file describes, with rvmm's own
/// settings from `base`.
fn config_from_file(file: &std::path::Path, base: &VmConfig) -> Result<VmConfig, String> {
    let full = rvmm::api::read_config_file(file).map_err(|e| e.to_string())?;
    if let Some(logger) = &full.logger {
        rvmm::log_target::configure(
            logger.log_path.as_deref().map(std::path::Path::new),
            logger.level.as_deref(),
        )?;
    }
    rvmm::api::config::vm_config(&full, base)
        .map_err(|e| format!("--config-file {}: {e}", file.display()))
}

/// `--api-sock`: the API thread gathers the VM's configuration; this thread
/// builds and runs each VM it is given, until one has run. Not inlined,
/// for the reason [`launch_from_args`] is not.
#[inline(never)]
fn serve_api(
    socket: &std::path::Path,
    config_file: Option<&std::path::Path>,
    base: VmConfig,
) -> ExitCode {
    let fail = |e: String| {
        eprintln!("rvmm: error: {e}");
        ExitCode::FAILURE
    };
    let preset = match config_file.map(rvmm::api::read_config_file).transpose() {
        Ok(preset) => preset.unwrap_or_default(),
        Err(e) => return fail(e.to_string()),
    };
    let listener = match rvmm::unix_listener::listen(socket, "--api-sock") {
        Ok(listener) => listener,
        Err(e) => return fail(e.to_string()),
    };
    let autostart = config_file.is_some();
    let starts = match rvmm::api::spawn(listener, base, preset, autostart) {
        Ok(starts) => starts,
        Err(e) => return fail(e.to_string()),
    };
    while let Ok(start) = starts.recv() {
        let reply = start.reply.clone();
        let hooks = rvmm::RunHooks {
            requests: Some(start.requests),
            on_started: Some(Box::new(move || {
                let _ = reply.send(Ok(()));
            })),
            restore: start.restore,
        };
        match rvmm::run_with(&start.config, hooks) {
            Err(e) if !autostart => {
                // The API tells its client; the VM may be configured again.
                log::warn!("InstanceStart failed: {e}");
                let _ = start.reply.send(Err(e.to_string()));
            }
            Err(e) => {
                let _ = start.reply.send(Err(e.to_string()));
                return fail(e.to_string());
            }
            result => return stopped(result),
        }
    }
    fail("the API thread stopped; see the log above".into())
}
