//! Building and running a VM, in the order the pieces depend on each other:
//! KVM → VM → memory → kernel and boot data → devices → vCPUs → run.

use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::VmFd;
use rvmm_devices::acpi_power::{AcpiPower, ACPI_POWER_PORT, ACPI_POWER_PORT_LEN};
use rvmm_devices::boot_timer::{BootTimer, BOOT_TIMER_ADDRESS, BOOT_TIMER_LEN};
use rvmm_devices::i8042::{I8042, I8042_KBD_IRQ, I8042_PORT, I8042_PORT_LEN};
use rvmm_devices::serial::{SerialConsole, COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
use rvmm_devices::virtio::mmio::MMIO_WINDOW_SIZE;
use rvmm_devices::{Bus, BusError};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{self, cmdline, BootError, KernelImage};
use crate::config::{ConfigError, SerialConfig, VmConfig};
use crate::console::{ConsoleInput, RawTerminal};
use crate::console_output::{self, OutputSink};
use crate::console_socket::SocketConsole;
use crate::disks::{self, DiskError};
use crate::host;
use crate::hypervisor::{self, KvmError};
use crate::memory::{self, GuestMemoryMmap, MemoryError};
use crate::net::{self, NetError};
use crate::running_vm::RunningVm;
use crate::seccomp;
use crate::signals::StopSignals;
use crate::vcpu::{
    self, GuestStop, Pause, StartGate, StopError, StopReason, Vcpu, VcpuHandle, VmStop,
};
use crate::virtio_devices::{self, AttachError};
use crate::vm::{Vm, VmError};
use crate::vm_control::{VmControl, VmRequests};
use crate::vsock;
use crate::x86::acpi::{self, AcpiDevice};
use crate::x86::regs::{self, EntryMode, RegsError};
use crate::x86::{cpuid, mptable, paging};
use rvmm_devices::virtio::net::{Net, RX_QUEUE};

#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    PitSetup(#[from] crate::pit_setup::PitSetupError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Regs(#[from] RegsError),
    #[error(transparent)]
    MpTable(#[from] crate::x86::mptable::MpTableError),
    #[error(transparent)]
    Acpi(#[from] crate::x86::acpi::AcpiError),
    #[error(transparent)]
    Listen(#[from] crate::unix_listener::ListenError),
    #[error(transparent)]
    Vsock(#[from] crate::vsock::VsockError),
    #[error(transparent)]
    ConsoleOutput(#[from] crate::console_output::ConsoleOutputError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("could not write the boot page tables: {0}")]
    PageTables(vm_memory::GuestMemoryError),
    #[error("device layout: {0}")]
    Bus(#[from] BusError),
    #[error("could not {what}: {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("KVM could not {what}: {source}")]
    KvmCall {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("could not create the event loop: {0}")]
    EventLoop(#[source] event_manager::Error),
    #[error("could not restore the snapshot: {0}")]
    Restore(String),
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Setup { what, source }
}

fn kvm_call(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::KvmCall { what, source }
}

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Records when the process started; `main` calls it first thing. Boot
/// times are measured from here (or from the first `run` if never called).
pub fn mark_process_start() {
    PROCESS_START.get_or_init(Instant::now);
}

fn since_process_start() -> Duration {
    PROCESS_START.get_or_init(Instant::now).elapsed()
}

/// CPU time this process has used so far (all threads).
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Logs (at debug level) when each build step is done, counted from process
/// start, in wall and CPU time.
pub(crate) fn phase(what: &str) {
    log::debug!(
        "phase: {what} at {:.2} ms wall, {:.2} ms CPU",
        ms(since_process_start()),
        ms(process_cpu_time())
    );
}

/// The boot timer's report: the first at info level; later ones, which only
/// the guest decides to make, at debug level, so it cannot flood the log.
fn boot_timer(first_run: &Arc<OnceLock<Instant>>) -> BootTimer {
    let first_run = first_run.clone();
    let mut reported = false;
    BootTimer::new(move || {
        let level = if reported {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        reported = true;
        let guest = first_run.get().map(|t| ms(t.elapsed())).unwrap_or(0.0);
        log::log!(
            level,
            "boot timer: guest booted {:.2} ms after rvmm started ({:.2} ms CPU), {:.2} ms after its first instruction",
            ms(since_process_start()),
            ms(process_cpu_time()),
            guest
        );
    })
}

/// Checks the files a VM needs before any host resource is taken, so a typo
/// gets its own message even on a host without KVM.
fn check_input_files(config: &VmConfig) -> Result<(), BootError> {
    boot::open_image("kernel", &config.kernel)?;
    if let Some(initrd) = &config.initrd {
        boot::open_image("initrd", initrd)?;
    }
    Ok(())
}

/// Loads kernel, initrd and command line (with `device_args` for the
/// devices the kernel must be told about), and writes the boot data.
fn load_guest(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    device_args: &[String],
) -> Result<KernelImage, VmmError> {
    let kernel = boot::load_kernel(mem, &config.kernel)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|path| boot::load_initrd(mem, path, &kernel))
        .transpose()?;

    let base = config.base_cmdline();
    let quirks = host::quirk_flags(host::is_pvm_host(), &base);
    let extra: Vec<String> = quirks.iter().chain(device_args).cloned().collect();
    let cmdline =
        cmdline::build_cmdline(&base, &extra, kernel.cmdline_max).map_err(BootError::from)?;
    if !quirks.is_empty() {
        log::warn!(
            "host KVM is PVM-backed (kvm_pvm): adding '{}' to the kernel command line so Linux gets as far as this host allows; guest kernel code is emulated here, so Linux takes minutes and may print nothing until its serial driver loads (add earlyprintk=serial to --cmdline to see it sooner)",
            quirks.join(" ")
        );
    }
    log::info!("kernel command line: {}", cmdline::to_string(&cmdline));
    boot::write_boot_info(mem, &kernel, &cmdline, initrd, mem_bytes)?;

    regs::write_boot_tables(mem, kernel.entry)?;
    if let EntryMode::LongMode { .. } = kernel.entry {
        paging::write_identity_tables(mem).map_err(VmmError::PageTables)?;
    }
    Ok(kernel)
}

/// What the ACPI tables describe: COM1, the i8042 and every virtio device's
/// window.
fn acpi_devices(virtio_count: usize) -> Vec<AcpiDevice> {
    let mut devices = vec![
        AcpiDevice::Serial {
            port: COM1_PORT as u16,
            len: COM1_PORT_LEN as u8,
            irq: COM1_IRQ,
        },
        AcpiDevice::I8042 { irq: I8042_KBD_IRQ },
    ];
    devices.extend((0..virtio_count).map(|index| {
        let (base, irq) = virtio_devices::placement(index);
        AcpiDevice::VirtioMmio {
            base: base as u32,
            len: MMIO_WINDOW_SIZE as u32,
            irq,
        }
    }));
    devices
}

/// The legacy devices on the port-I/O bus: COM1, the i8042 and the ACPI
/// power registers.
struct LegacyDevices {
    io_bus: Bus,
    serial: Arc<Mutex<SerialConsole>>,
    serial_input_space: EventFd,
    i8042: Arc<Mutex<I8042>>,
}

/// The legacy devices, in the state a snapshot saved (`restore`) or fresh.
/// The guest's power-off and reset requests stop the VM through `stop`.
fn create_legacy_devices(
    vm: &VmFd,
    output: OutputSink,
    restore: Option<&crate::snapshot::SnapshotState>,
    stop: &Arc<VmStop>,
) -> Result<LegacyDevices, VmmError> {
    let new_evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(setup("create an eventfd"));
    let serial_irq = new_evt()?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(kvm_call("route the serial interrupt"))?;
    let serial_input_space = new_evt()?;
    let input_space = serial_input_space
        .try_clone()
        .map_err(setup("clone an eventfd"))?;
    let serial = match restore {
        Some(state) => {
            SerialConsole::with_state(serial_irq, input_space, Box::new(output), &state.serial)
                .map_err(VmmError::Restore)?
        }
        None => SerialConsole::new(serial_irq, input_space, Box::new(output)),
    };
    let serial = Arc::new(Mutex::new(serial));
    let kbd_irq = new_evt()?;
    vm.register_irqfd(&kbd_irq, I8042_KBD_IRQ)
        .map_err(kvm_call("route the keyboard interrupt"))?;
    let mut i8042 = I8042::new(GuestStop::new(stop, StopReason::Reset), kbd_irq);
    if let Some(state) = restore {
        i8042.restore(&state.i8042);
    }
    let i8042 = Arc::new(Mutex::new(i8042));
    let acpi_power = AcpiPower::new(
        GuestStop::new(stop, StopReason::Shutdown),
        GuestStop::new(stop, StopReason::Reset),
    );

    let mut io_bus = Bus::new();
    io_bus.insert(serial.clone(), COM1_PORT, COM1_PORT_LEN)?;
    io_bus.insert(i8042.clone(), I8042_PORT, I8042_PORT_LEN)?;
    io_bus.insert(
        Arc::new(Mutex::new(acpi_power)),
        ACPI_POWER_PORT,
        ACPI_POWER_PORT_LEN,
    )?;
    Ok(LegacyDevices {
        io_bus,
        serial,
        serial_input_space,
        i8042,
    })
}

/// The vCPUs, each with its CPUID and set to enter the kernel at `entry`,
/// or in the state a snapshot saved.
fn create_vcpus(
    supported: hypervisor::SupportedCpuid,
    vm: &VmFd,
    config: &VmConfig,
    start: VcpuStart<'_>,
    io_bus: Arc<Bus>,
    mmio_bus: Arc<Bus>,
) -> Result<Vec<Vcpu>, VmmError> {
    let supported = supported.wait()?;
    (0..config.cpus)
        .map(|id| {
            let fd = vm
                .create_vcpu(u64::from(id))
                .map_err(kvm_call("create a vCPU"))?;
            fd.set_cpuid2(&cpuid::vcpu_cpuid(&supported, id, config.cpus))
                .map_err(kvm_call("set the vCPU's CPUID"))?;
            match start {
                VcpuStart::Boot(entry) => regs::configure_vcpu(&fd, id, entry)?,
                VcpuStart::Restore(state) => {
                    crate::snapshot::kvm::restore_vcpu(&fd, &state.vcpus[usize::from(id)])
                        .map_err(|e| VmmError::Restore(format!("vCPU {id}: {e}")))?
                }
            }
            Ok(Vcpu::new(id, fd, io_bus.clone(), mmio_bus.clone()))
        })
        .collect()
}

/// How the vCPUs begin: at the kernel's entry, or where a snapshot left them.
#[derive(Clone, Copy)]
enum VcpuStart<'a> {
    Boot(EntryMode),
    Restore(&'a crate::snapshot::SnapshotState),
}

/// What a run hands to others: the API's requests to serve, and who to tell
/// once the VM is built and its guest about to run; a snapshot to restore
/// instead of booting the kernel.
#[derive(Default)]
pub struct RunHooks {
    pub requests: Option<VmRequests>,
    pub on_started: Option<Box<dyn FnOnce() + Send>>,
    pub restore: Option<crate::snapshot::Restore>,
}

/// Builds the VM described by `config`, runs it until it stops, and returns why.
pub fn run(config: &VmConfig) -> Result<StopReason, VmmError> {
    run_with(config, RunHooks::default())
}

/// As [`run`], with `hooks`.
pub fn run_with(config: &VmConfig, hooks: RunHooks) -> Result<StopReason, VmmError> {
    let running = build(config, hooks)?;
    Ok(running.serve())
}

/// Builds the VM and starts its vCPUs. Never inlined into [`run_with`]:
/// its frame, kilobytes of setup's locals, has ended before the event loop
/// runs, so the stack pages it used can go back to the kernel.
#[inline(never)]
fn build(config: &VmConfig, mut hooks: RunHooks) -> Result<RunningVm, VmmError> {
    phase("configuration read");
    let restore = hooks.restore.take();
    if restore.is_none() {
        check_input_files(config)?;
    }
    // Before any host resource, so a bad --serial path gets its own message.
    let mut socket_console = None;
    let (output, output_pump) = match &config.serial {
        SerialConfig::Stdio => console_output::to_stdout()?,
        SerialConfig::File(path) => console_output::to_file(path)?,
        SerialConfig::Socket(path) => {
            let listener = crate::unix_listener::listen(path, "--serial socket")?;
            let (sink, pump, target) = console_output::for_clients()?;
            socket_console = Some((listener, target));
            (sink, pump)
        }
        SerialConfig::Off => console_output::discarded()?,
    };
    let device_count = config.disks.len() + config.nets.len() + usize::from(config.vsock.is_some());
    if device_count > virtio_devices::MAX_DEVICES {
        return Err(ConfigError::TooManyDevices {
            given: device_count,
            max: virtio_devices::MAX_DEVICES,
        }
        .into());
    }
    let blocks = disks::open_disks(&config.disks)?;
    let disk_sizes: Vec<u64> = blocks
        .iter()
        .map(|b| b.sectors() * rvmm_devices::virtio::block::SECTOR_SIZE)
        .collect();
    let taps = net::open_nets(&config.nets)?;
    let vsock = config.vsock.as_ref().map(vsock::open_vsock).transpose()?;
    let mem_bytes = memory::checked_mem_bytes(config.mem_mib, memory::host_phys_bits())?;

    let kvm = hypervisor::open_kvm()?;
    let supported_cpuid = hypervisor::SupportedCpuid::ask(&kvm)?;
    config.check_cpus(kvm.get_max_vcpus(), usize::from(mptable::MAX_CPUS))?;
    if config.cpus > 1 && host::is_pvm_host() {
        log::warn!("--cpus {}: secondary vCPUs cannot start on a PVM-backed host; Linux will list them but stop bringing them up", config.cpus);
    }
    let memory_file = restore.as_ref().map(|r| &r.memory);
    let built = Vm::create(&kvm, mem_bytes, config.hugepages, memory_file, || {
        phase("VM created")
    })?;
    let (vm, mem) = (built.fd(), built.memory());
    phase("memory mapped");

    let saved = restore.as_ref().map(|r| &*r.state);
    let start = match saved {
        // The kernel, its boot data and the firmware tables are in the
        // snapshot's memory already.
        Some(state) => VcpuStart::Restore(state),
        None => {
            let device_args: Vec<String> =
                (0..device_count).map(virtio_devices::cmdline_arg).collect();
            let loading = crate::host_memory::huge_pages_while_loading(mem, config.hugepages);
            let kernel = load_guest(config, mem, mem_bytes, &device_args)?;
            loading.done();
            mptable::write_mptable(mem, config.cpus)?;
            acpi::write_acpi_tables(mem, config.cpus, &acpi_devices(device_count))?;
            phase("kernel loaded");
            VcpuStart::Boot(kernel.entry)
        }
    };

    let output_pump = Arc::new(Mutex::new(output_pump));
    let stop = Arc::new(VmStop::new().map_err(setup("create an eventfd"))?);
    let devices = create_legacy_devices(vm, output, saved, &stop)?;
    let io_bus = Arc::new(devices.io_bus);
    let mut mmio_bus = Bus::new();
    let first_run = Arc::new(OnceLock::new());
    if config.boot_timer {
        let timer = Arc::new(Mutex::new(boot_timer(&first_run)));
        mmio_bus.insert(timer, BOOT_TIMER_ADDRESS, BOOT_TIMER_LEN)?;
    }
    let mut attached = disks::attach_disks(vm, mem, &mut mmio_bus, blocks)?;
    let disk_transports: Vec<_> = attached.iter().map(|d| d.transport()).collect();
    if let Some(state) = saved {
        crate::snapshot::restore_disks(&disk_transports, &state.disks)
            .map_err(VmmError::Restore)?;
    }
    for (i, (tap, mac)) in taps.into_iter().enumerate() {
        let tap_fd = tap.file.as_raw_fd();
        let name = format!("network card {i} (tap {})", config.nets[i].tap);
        let index = config.disks.len() + i;
        let device = Box::new(Net::new(tap.file, mac, tap.set_offloads));
        let card = virtio_devices::attach(vm, mem, &mut mmio_bus, index, &name, device)?;
        // The card owns the tap; frames arriving on it go to the receive queue.
        attached.push(card.serve_on_input(tap_fd, RX_QUEUE));
    }
    if let Some(vsock) = vsock {
        let host_fd = vsock.host_events_fd();
        let index = config.disks.len() + config.nets.len();
        let device =
            virtio_devices::attach(vm, mem, &mut mmio_bus, index, "vsock", Box::new(vsock))?;
        // Host connections and their data are served with the receive queue.
        attached.push(device.serve_on_input(host_fd, vsock::RX_QUEUE));
    }
    let mmio_bus = Arc::new(mmio_bus);
    let vcpus = create_vcpus(supported_cpuid, vm, config, start, io_bus, mmio_bus)?;
    if let Some(state) = saved {
        crate::snapshot::kvm::restore_vm(vm, &state.vm).map_err(VmmError::Restore)?;
    }
    // After the PIT's restored state: both take the PIT's lock.
    let mut pit_setup = crate::pit_setup::discard_missed_ticks(vm, config.seccomp)?;
    // Only the API takes snapshots: a source for it, when it is there.
    let snapshots = match hooks.requests {
        Some(_) => Some(crate::snapshot::Source {
            vm: crate::snapshot::second_handle(&kvm, vm).map_err(VmmError::Restore)?,
            memory: mem.clone(),
            serial: devices.serial.clone(),
            disks: config
                .disks
                .iter()
                .zip(disk_sizes)
                .zip(disk_transports)
                .map(|((config, size), transport)| crate::snapshot::DiskSource {
                    config: config.clone(),
                    size,
                    transport,
                })
                .collect(),
            msr_indices: crate::snapshot::kvm::saved_msr_indices(&kvm)
                .map_err(VmmError::Restore)?,
            mem_mib: config.mem_mib,
            cpus: config.cpus,
            cmdline: saved.map_or_else(|| config.base_cmdline(), |s| s.cmdline.clone()),
            unsupported: if !config.nets.is_empty() {
                Some("network cards")
            } else if config.vsock.is_some() {
                Some("a vsock device")
            } else {
                None
            },
        }),
        None => None,
    };

    // Each thread's filter lets it make only what this VM's devices need.
    let serves = seccomp::Serves {
        disks: !config.disks.is_empty(),
        network: !config.nets.is_empty(),
        vsock: config.vsock.is_some(),
        serial_socket: matches!(config.serial, SerialConfig::Socket(_)),
        snapshots: snapshots.is_some(),
    };
    let signals = StopSignals::install().map_err(setup("install signal handlers"))?;
    vcpu::install_kick_handler().map_err(setup("install the vCPU kick handler"))?;
    let mut events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().map_err(VmmError::EventLoop)?;
    // Only a console on stdio takes input from stdin (and a terminal's raw
    // mode); one on a socket takes it from the socket's client.
    let terminal = (config.serial == SerialConfig::Stdio).then(RawTerminal::enter);
    let input = ConsoleInput::new(
        devices.serial.clone(),
        devices.serial_input_space,
        terminal.as_ref().is_some_and(RawTerminal::is_active),
        stop.clone(),
    );
    if terminal.is_some() {
        events.add_subscriber(Arc::new(Mutex::new(input)));
    } else if let Some((listener, target)) = socket_console {
        let console = SocketConsole::new(listener, input.without_source(), target);
        events.add_subscriber(Arc::new(Mutex::new(console)));
    }
    for device in attached {
        events.add_subscriber(Arc::new(Mutex::new(device)));
    }
    events.add_subscriber(output_pump.clone());
    let pause = Arc::new(Pause::default());
    if restore.as_ref().is_some_and(|r| !r.resume) {
        pause.start_paused();
    }
    let control = VmControl::new(signals, stop.clone(), devices.i8042, config.stop_timeout)
        .map_err(setup("create the stop timer"))?
        .serving(hooks.requests.take(), pause.clone(), vcpus.len(), snapshots);
    events.add_subscriber(Arc::new(Mutex::new(control)));

    phase("first KVM_RUN");
    let _ = first_run.set(Instant::now());
    let gate = Arc::new(StartGate::default());
    let vcpu_filter = config.seccomp.then_some(seccomp::ThreadKind::Vcpu {
        snapshots: serves.snapshots,
    });
    let mut handles: Vec<VcpuHandle> = Vec::with_capacity(vcpus.len());
    for vcpu in vcpus {
        let id = vcpu.id;
        let pit_entry = if id == 0 {
            pit_setup.vcpu0_entry()
        } else {
            None
        };
        match vcpu.start(
            stop.clone(),
            gate.clone(),
            pause.clone(),
            vcpu_filter,
            pit_entry,
        ) {
            Ok(handle) => {
                pause.add_thread(handle.pthread());
                handles.push(handle);
            }
            Err(e) => {
                stop.request(StopReason::Error(StopError::VcpuThread {
                    vcpu: id,
                    reason: e.to_string(),
                }));
                break;
            }
        }
    }

    if config.seccomp {
        if let Err(e) = seccomp::apply(seccomp::ThreadKind::Vmm(serves)) {
            stop.request(StopReason::Error(StopError::Sandbox(e.to_string())));
        }
    } else {
        log::warn!("--no-seccomp: rvmm runs without its sandbox; a guest that breaks out of a device reaches the whole host user");
    }
    if let Some(started) = hooks.on_started.take() {
        started();
    }
    // Every thread is under its filter before the guest's first instruction.
    pit_setup.wait_until_filtered();
    gate.open();
    Ok(RunningVm {
        events,
        stop,
        pause,
        vcpus: handles,
        pit_setup,
        output_pump,
        terminal,
        _vm: built,
    })
}
