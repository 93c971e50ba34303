//! The API thread: Firecracker's REST API on a Unix socket, for what rvmm
//! has. Before `InstanceStart` it gathers the configuration (checking
//! files as they are named, as Firecracker does); `InstanceStart` hands the
//! VM to the main thread, which builds and runs it; afterwards the thread
//! answers state queries and passes Ctrl-Alt-Del, pause and resume to the
//! running VM's event loop. It runs under a seccomp filter of its own.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use vmm_sys_util::eventfd::EventFd;

use super::config::{self, check_boot_source, check_drive, check_machine};
use super::http::{Client, Received, Request, Response};
use super::model::*;
use crate::config::VmConfig;
use crate::snapshot::{self, Restore};
use crate::vm_control::{VmAction, VmReply, VmRequest, VmRequests};

/// What rvmm says it is in `GET /` and `GET /version`.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Most clients served at once.
const MAX_CLIENTS: usize = 16;
/// How long the running VM has to carry out a request (a pause waits for
/// every vCPU to leave the guest).
const VM_REPLY_LIMIT: Duration = Duration::from_secs(5);

const NOT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
const NOT_BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";

/// A VM for the main thread to build and run. It answers on `reply` once the
/// VM runs (Ok) or could not be built (Err, with why), and serves
/// `requests` while it runs.
pub struct StartRequest {
    pub config: VmConfig,
    pub requests: VmRequests,
    pub reply: mpsc::Sender<Result<(), String>>,
    /// A snapshot to restore instead of booting.
    pub restore: Option<Restore>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Running,
    Paused,
}

/// The running VM, as the API thread reaches it.
struct RunningVm {
    requests: mpsc::Sender<VmRequest>,
    wake: EventFd,
}

/// The API's state.
pub struct Api {
    base: VmConfig,
    full: FullConfig,
    phase: Phase,
    vm: Option<RunningVm>,
    start: mpsc::Sender<StartRequest>,
    metrics: Option<std::fs::File>,
    requests_served: u64,
    requests_failed: u64,
}

fn fault(message: impl Into<String>) -> Response {
    let body = serde_json::to_string(&Fault {
        fault_message: message.into(),
    })
    .expect("a fault serializes");
    Response::json(400, body)
}

fn ok_json(value: &impl serde::Serialize) -> Response {
    Response::json(
        200,
        serde_json::to_string(value).expect("API bodies serialize"),
    )
}

/// A request body as `T`, or Firecracker's message about why it is not.
fn body<T: DeserializeOwned>(request: &Request) -> Result<T, Response> {
    serde_json::from_slice(&request.body).map_err(|e| {
        fault(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

impl Api {
    /// The API for a VM on top of `base` (rvmm's command-line settings),
    /// configured as `preset` says; InstanceStart goes to `start`.
    pub fn new(base: VmConfig, preset: FullConfig, start: mpsc::Sender<StartRequest>) -> Api {
        Api {
            base,
            full: preset,
            phase: Phase::NotStarted,
            vm: None,
            start,
            metrics: None,
            requests_served: 0,
            requests_failed: 0,
        }
    }

    /// Answers one request.
    pub fn handle(&mut self, request: &Request) -> Response {
        let response = self.route(request);
        self.requests_served += 1;
        if response.status >= 400 {
            self.requests_failed += 1;
        }
        response
    }

    fn route(&mut self, request: &Request) -> Response {
        let path = request.path.split('?').next().unwrap_or("");
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let started = self.phase != Phase::NotStarted;
        match (request.method.as_str(), parts.as_slice()) {
            ("GET", [""]) => ok_json(&InstanceInfo {
                id: "anonymous-instance".into(),
                state: match self.phase {
                    Phase::NotStarted => "Not started",
                    Phase::Running => "Running",
                    Phase::Paused => "Paused",
                },
                vmm_version: VMM_VERSION,
                app_name: "rvmm",
            }),
            ("GET", ["version"]) => {
                ok_json(&serde_json::json!({ "firecracker_version": VMM_VERSION }))
            }
            ("GET", ["machine-config"]) => {
                ok_json(&self.full.machine_config.clone().unwrap_or_default())
            }
            ("GET", ["vm", "config"]) => ok_json(&self.full),
            ("PUT", ["actions"]) => match body::<Action>(request) {
                Ok(action) => self.action(action.action_type),
                Err(response) => response,
            },
            ("PATCH", ["vm"]) => match body::<VmStateChange>(request) {
                Ok(change) => self.change_state(change.state),
                Err(response) => response,
            },
            ("PUT", ["snapshot", "create"]) => match body::<SnapshotCreate>(request) {
                Ok(create) => self.create_snapshot(&create),
                Err(response) => response,
            },
            ("PUT", ["snapshot", "load"]) => match body::<SnapshotLoad>(request) {
                Ok(load) => self.load_snapshot(&load),
                Err(response) => response,
            },
            // Everything below configures the VM, which only goes before it starts.
            ("PUT" | "PATCH", _)
                if started && parts.first().is_some_and(|p| CONFIG_PATHS.contains(p)) =>
            {
                fault(NOT_AFTER_START)
            }
            ("PUT", ["boot-source"]) => self.put(request, |api, source: BootSource| {
                check_boot_source(&source)?;
                api.full.boot_source = Some(source);
                Ok(())
            }),
            ("PUT", ["machine-config"]) => self.put(request, |api, machine: MachineConfig| {
                check_machine(&machine)?;
                api.full.machine_config = Some(machine);
                Ok(())
            }),
            ("PATCH", ["machine-config"]) => {
                self.put(request, |api, update: MachineConfigUpdate| {
                    let mut machine = api.full.machine_config.clone().unwrap_or_default();
                    machine.vcpu_count = update.vcpu_count.unwrap_or(machine.vcpu_count);
                    machine.mem_size_mib = update.mem_size_mib.unwrap_or(machine.mem_size_mib);
                    machine.smt = update.smt.unwrap_or(machine.smt);
                    machine.track_dirty_pages = update
                        .track_dirty_pages
                        .unwrap_or(machine.track_dirty_pages);
                    machine.huge_pages = update.huge_pages.unwrap_or(machine.huge_pages);
                    machine.cpu_template = update.cpu_template.or(machine.cpu_template);
                    check_machine(&machine)?;
                    api.full.machine_config = Some(machine);
                    Ok(())
                })
            }
            ("PUT", ["drives", id]) => {
                let id = id.to_string();
                self.put(request, move |api, drive: Drive| {
                    if drive.drive_id != id {
                        return Err(IdMismatch.into());
                    }
                    check_drive(&drive)?;
                    match api.full.drives.iter_mut().find(|d| d.drive_id == id) {
                        Some(existing) => *existing = drive,
                        None => api.full.drives.push(drive),
                    }
                    Ok(())
                })
            }
            ("PUT", ["network-interfaces", id]) => {
                let id = id.to_string();
                self.put(request, move |api, iface: NetworkInterface| {
                    if iface.iface_id != id {
                        return Err(IdMismatch.into());
                    }
                    let list = &mut api.full.network_interfaces;
                    match list.iter_mut().find(|i| i.iface_id == id) {
                        Some(existing) => *existing = iface,
                        None => list.push(iface),
                    }
                    Ok(())
                })
            }
            ("PUT", ["vsock"]) => self.put(request, |api, vsock: Vsock| {
                api.full.vsock = Some(vsock);
                Ok(())
            }),
            ("PUT", ["logger"]) => self.put(request, |api, logger: Logger| {
                crate::log_target::configure(
                    logger.log_path.as_deref().map(std::path::Path::new),
                    logger.level.as_deref(),
                )
                .map_err(PutError::Message)?;
                if logger.module.is_some() {
                    return Err(PutError::Message(
                        "Logger error: a module filter is not supported by rvmm; use RUST_LOG"
                            .into(),
                    ));
                }
                api.full.logger = Some(logger);
                Ok(())
            }),
            ("PUT", ["metrics"]) => self.put(request, |api, metrics: Metrics| {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&metrics.metrics_path)
                    .map_err(|e| {
                        PutError::Message(format!(
                            "Metrics error: Cannot open the metrics file: {e}"
                        ))
                    })?;
                api.metrics = Some(file);
                api.full.metrics = Some(metrics);
                Ok(())
            }),
            ("PUT" | "PATCH" | "GET", [what, ..]) if FIRECRACKER_ONLY.contains(what) => {
                fault(format!(
                    "rvmm does not have {what} yet ({} /{what}); leave it out",
                    request.method
                ))
            }
            ("PATCH", [what, ..]) if CONFIG_PATHS.contains(what) => fault(format!(
                "rvmm cannot change {what} with PATCH; PUT it again before InstanceStart"
            )),
            _ => fault(format!(
                "Invalid request method and/or path: {} {}.",
                request.method,
                path.trim_start_matches('/')
            )),
        }
    }

    /// Parses the body as `T` and applies it with `apply`: 204, or 400 why.
    fn put<T: DeserializeOwned>(
        &mut self,
        request: &Request,
        apply: impl FnOnce(&mut Api, T) -> Result<(), PutError>,
    ) -> Response {
        let value = match body::<T>(request) {
            Ok(value) => value,
            Err(response) => return response,
        };
        match apply(self, value) {
            Ok(()) => Response::no_content(),
            Err(e) => fault(e.to_string()),
        }
    }

    fn action(&mut self, action: ActionType) -> Response {
        match action {
            ActionType::InstanceStart if self.phase != Phase::NotStarted => fault(NOT_AFTER_START),
            ActionType::InstanceStart => self.start_vm(),
            ActionType::SendCtrlAltDel => match self.ask_vm(VmAction::CtrlAltDel) {
                Ok(_) => Response::no_content(),
                Err(response) => response,
            },
            ActionType::FlushMetrics => self.flush_metrics(),
        }
    }

    fn change_state(&mut self, state: VmStateName) -> Response {
        let (action, next) = match state {
            VmStateName::Paused => (VmAction::Pause, Phase::Paused),
            VmStateName::Resumed => (VmAction::Resume, Phase::Running),
        };
        match self.ask_vm(action) {
            Ok(_) => {
                self.phase = next;
                Response::no_content()
            }
            Err(response) => response,
        }
    }

    /// Firecracker's `PUT /snapshot/create` of a paused VM: the state file
    /// and the memory file, written by this thread.
    fn create_snapshot(&mut self, create: &SnapshotCreate) -> Response {
        if self.phase == Phase::NotStarted {
            return fault(NOT_BEFORE_START);
        }
        if self.phase != Phase::Paused {
            return fault(
                "Create snapshot error: the microVM must be paused first (PATCH /vm Paused)",
            );
        }
        if create.snapshot_type.as_deref().is_some_and(|t| t != "Full") {
            return fault("Create snapshot error: rvmm takes Full snapshots only");
        }
        let open = |path: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(path)
                .map_err(|e| fault(format!("Create snapshot error: cannot open {path}: {e}")))
        };
        let (mut state_file, memory_file) =
            match (open(&create.snapshot_path), open(&create.mem_file_path)) {
                (Ok(state), Ok(memory)) => (state, memory),
                (Err(response), _) | (_, Err(response)) => return response,
            };
        let (state, memory) = match self.ask_vm(VmAction::Snapshot) {
            Ok(VmReply::Snapshot(state, memory)) => (state, memory),
            Ok(VmReply::Done) => return fault("Create snapshot error: the VM gave no state"),
            Err(response) => return response,
        };
        let written = snapshot::write_memory(&memory, &memory_file)
            .and_then(|()| snapshot::write_state(&state, &mut state_file));
        match written {
            Ok(()) => Response::no_content(),
            Err(e) => fault(format!("Create snapshot error: {e}")),
        }
    }

    /// Firecracker's `PUT /snapshot/load`, before anything is configured.
    fn load_snapshot(&mut self, load: &SnapshotLoad) -> Response {
        if self.phase != Phase::NotStarted {
            return fault(NOT_AFTER_START);
        }
        if self.full.boot_source.is_some() || !self.full.drives.is_empty() {
            return fault("Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources.");
        }
        if load.enable_diff_snapshots || load.track_dirty_pages {
            return fault("Load snapshot error: rvmm has no diff snapshots (dirty page tracking)");
        }
        let memory_path = match (&load.mem_backend, &load.mem_file_path) {
            (Some(backend), None) if backend.backend_type == "File" => backend.backend_path.clone(),
            (Some(_), None) => {
                return fault(
                    "Load snapshot error: rvmm takes a File memory backend only (no UFFD)",
                )
            }
            (None, Some(path)) => path.clone(),
            _ => {
                return fault(
                    "Load snapshot error: give exactly one of mem_backend and mem_file_path",
                )
            }
        };
        let state = match snapshot::read_state(std::path::Path::new(&load.snapshot_path)) {
            Ok(state) => state,
            Err(e) => return fault(format!("Load snapshot error: {e}")),
        };
        let memory = match std::fs::File::open(&memory_path) {
            Ok(file) => file,
            Err(e) => {
                return fault(format!(
                    "Load snapshot error: cannot open the memory file {memory_path}: {e}"
                ))
            }
        };
        let want = state.mem_mib << 20;
        match memory.metadata() {
            Ok(meta) if meta.len() == want => {}
            Ok(meta) => {
                return fault(format!(
                    "Load snapshot error: memory file {memory_path} is {} bytes; the snapshot's VM has {want}",
                    meta.len()
                ))
            }
            Err(e) => return fault(format!("Load snapshot error: {memory_path}: {e}")),
        }
        let config = VmConfig {
            kernel: Default::default(),
            initrd: None,
            cmdline: Some(state.cmdline.clone()),
            cmdline_append: None,
            mem_mib: state.mem_mib,
            cpus: state.cpus,
            disks: state
                .disks
                .iter()
                .map(|d| crate::config::DiskConfig {
                    path: d.path.clone(),
                    read_only: d.read_only,
                    id: d.id.clone(),
                })
                .collect(),
            nets: Vec::new(),
            vsock: None,
            ..self.base.clone()
        };
        self.full.machine_config = Some(MachineConfig {
            vcpu_count: state.cpus,
            mem_size_mib: state.mem_mib,
            ..MachineConfig::default()
        });
        let resume = load.resume_vm.unwrap_or(false);
        let restore = Restore {
            state: Box::new(state),
            memory,
            resume,
        };
        let response = self.start(config, Some(restore));
        if response.status == 204 && !resume {
            self.phase = Phase::Paused;
        }
        response
    }

    /// Hands the configured VM to the main thread and waits until it runs
    /// or fails.
    pub fn start_vm(&mut self) -> Response {
        let config = match config::vm_config(&self.full, &self.base) {
            Ok(config) => config,
            Err(e) => return fault(e.to_string()),
        };
        self.start(config, None)
    }

    /// Hands `config` (or the snapshot `restore`) to the main thread.
    fn start(&mut self, config: VmConfig, restore: Option<Restore>) -> Response {
        let (requests, vm) = match vm_channel() {
            Ok(pair) => pair,
            Err(e) => return fault(format!("Start microvm error: {e}")),
        };
        let (reply, started) = mpsc::channel();
        let request = StartRequest {
            config,
            requests,
            reply,
            restore,
        };
        if self.start.send(request).is_err() {
            return fault("Start microvm error: the VMM is gone");
        }
        match started.recv() {
            Ok(Ok(())) => {
                self.phase = Phase::Running;
                self.vm = Some(vm);
                Response::no_content()
            }
            Ok(Err(e)) => fault(format!("Start microvm error: {e}")),
            Err(_) => fault("Start microvm error: the VMM is gone"),
        }
    }

    /// Passes `action` to the running VM's event loop and waits for it.
    fn ask_vm(&mut self, action: VmAction) -> Result<VmReply, Response> {
        let Some(vm) = &self.vm else {
            return Err(fault(NOT_BEFORE_START));
        };
        let (reply, done) = mpsc::channel();
        if vm.requests.send(VmRequest { action, reply }).is_err() || vm.wake.write(1).is_err() {
            return Err(fault("the VM has stopped"));
        }
        match done.recv_timeout(VM_REPLY_LIMIT) {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(fault(e)),
            Err(_) => Err(fault("the VM did not answer in time")),
        }
    }

    /// Writes one line of metrics: rvmm keeps only its API's counters yet.
    fn flush_metrics(&mut self) -> Response {
        let Some(file) = &mut self.metrics else {
            return fault(
                "Metrics error: the metrics system is not initialized; PUT /metrics first",
            );
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let line = serde_json::json!({
            "utc_timestamp_ms": now,
            "api_server": {
                "requests": self.requests_served,
                "failed_requests": self.requests_failed,
            },
        });
        match writeln!(file, "{line}") {
            Ok(()) => Response::no_content(),
            Err(e) => fault(format!("Metrics error: cannot write the metrics file: {e}")),
        }
    }
}

/// The paths that configure the VM before it starts.
const CONFIG_PATHS: &[&str] = &[
    "boot-source",
    "machine-config",
    "drives",
    "network-interfaces",
    "vsock",
    "logger",
    "metrics",
];

/// Firecracker's endpoints for what rvmm lacks.
const FIRECRACKER_ONLY: &[&str] = &[
    "balloon",
    "mmds",
    "entropy",
    "cpu-config",
    "pmem",
    "hotplug",
    "serial",
];

/// The drive or card id of the path differs from the body's.
struct IdMismatch;

enum PutError {
    Config(config::ApiConfigError),
    Message(String),
}

impl From<config::ApiConfigError> for PutError {
    fn from(e: config::ApiConfigError) -> Self {
        PutError::Config(e)
    }
}

impl From<IdMismatch> for PutError {
    fn from(_: IdMismatch) -> Self {
        PutError::Message("The id from the path does not match the id from the body!".into())
    }
}

impl std::fmt::Display for PutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Config(e) => write!(f, "{e}"),
            PutError::Message(m) => f.write_str(m),
        }
    }
}

/// A request channel to a VM's event loop, and the API's end of it.
fn vm_channel() -> std::io::Result<(VmRequests, RunningVm)> {
    let wake = EventFd::new(libc::EFD_NONBLOCK)?;
    let (tx, rx) = mpsc::channel();
    let requests = VmRequests {
        wake: wake.try_clone()?,
        receiver: rx,
    };
    Ok((requests, RunningVm { requests: tx, wake }))
}

/// Serves `listener` for ever: every client's requests in turn, at most
/// [`MAX_CLIENTS`] at once.
pub fn serve(listener: UnixListener, mut api: Api) {
    let mut clients: Vec<Client> = Vec::new();
    loop {
        let mut fds: Vec<libc::pollfd> = std::iter::once(listener.as_raw_fd())
            .chain(clients.iter().map(|c| c.stream.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if clients.len() >= MAX_CLIENTS {
            fds[0].events = 0;
        }
        // SAFETY: poll reads and writes `fds.len()` pollfds, which `fds` holds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            continue;
        }
        let mut gone = Vec::new();
        for (i, client) in clients.iter_mut().enumerate() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            let keep = match client.read() {
                Received::Requests(requests) => requests.iter().all(|request| {
                    // A bug in a handler costs its request, not the API.
                    let response = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        api.handle(request)
                    }))
                    .unwrap_or_else(|_| {
                        Response::json(500, r#"{"fault_message":"rvmm's API failed on this request (a bug); see its log"}"#.into())
                    });
                    client.send(&response)
                }),
                Received::Invalid(why) => {
                    client.send(&fault(format!("Invalid request: {why}")));
                    false
                }
                Received::Closed => false,
            };
            if !keep {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            clients.swap_remove(i);
        }
        // After the clients polled above: a new one has no pollfd yet.
        if fds[0].revents & libc::POLLIN != 0 {
            if let Some(stream) = accept(&listener) {
                clients.push(Client::new(stream));
            }
        }
    }
}

/// A client, non-blocking (accept4 sets it: the filter allows no ioctl).
fn accept(listener: &UnixListener) -> Option<UnixStream> {
    // SAFETY: accept4 on the listener, without an address; the new
    // descriptor is owned at once.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    // SAFETY: a fresh descriptor that nothing else owns.
    (fd >= 0).then(|| UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}
