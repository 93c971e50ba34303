//! Firecracker's API bodies, field for field (its swagger, v1.16), as far
//! as rvmm has what they describe. Unknown fields are refused, as
//! Firecracker refuses them; fields rvmm takes but cannot honour are
//! refused with a message that names them.

use serde::{Deserialize, Serialize};

/// `PUT /boot-source`, and `boot-source` in a config file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default)]
    pub initrd_path: Option<String>,
    #[serde(default)]
    pub boot_args: Option<String>,
}

/// `PUT /drives/{drive_id}`, and one of `drives`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    pub drive_id: String,
    #[serde(default)]
    pub path_on_host: Option<String>,
    pub is_root_device: bool,
    #[serde(default)]
    pub is_read_only: Option<bool>,
    #[serde(default)]
    pub partuuid: Option<String>,
    /// "Unsafe" (Firecracker's default) or "Writeback"; rvmm's disks are
    /// writeback (a guest flush is an fdatasync) either way.
    #[serde(default)]
    pub cache_type: Option<String>,
    /// "Sync" only: rvmm has no io_uring engine.
    #[serde(default)]
    pub io_engine: Option<String>,
    #[serde(default)]
    pub rate_limiter: Option<serde_json::Value>,
    #[serde(default)]
    pub socket: Option<String>,
}

/// `PUT /machine-config` (and `PATCH`, field by field).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// "None" or "2M".
    #[serde(default = "no_huge_pages")]
    pub huge_pages: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

fn no_huge_pages() -> String {
    "None".into()
}

impl Default for MachineConfig {
    /// Firecracker's defaults.
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: no_huge_pages(),
            cpu_template: None,
        }
    }
}

/// `PATCH /machine-config`: only the fields given change.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<u64>,
    pub smt: Option<bool>,
    pub track_dirty_pages: Option<bool>,
    pub huge_pages: Option<String>,
    pub cpu_template: Option<String>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default)]
    pub guest_mac: Option<String>,
    #[serde(default)]
    pub rx_rate_limiter: Option<serde_json::Value>,
    #[serde(default)]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

/// `PUT /vsock`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    pub guest_cid: u32,
    pub uds_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// `PUT /logger`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    #[serde(default)]
    pub log_path: Option<String>,
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub show_level: Option<bool>,
    #[serde(default)]
    pub show_log_origin: Option<bool>,
    #[serde(default)]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    pub metrics_path: String,
}

/// `PUT /actions`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub action_type: ActionType,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmStateChange {
    pub state: VmStateName,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum VmStateName {
    Paused,
    Resumed,
}

/// `PUT /snapshot/create`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    #[serde(default)]
    pub snapshot_type: Option<String>,
    pub snapshot_path: String,
    pub mem_file_path: String,
    #[serde(default)]
    pub version: Option<String>,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_path: String,
    pub backend_type: String,
}

/// `PUT /snapshot/load`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    pub snapshot_path: String,
    #[serde(default)]
    pub mem_file_path: Option<String>,
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    #[serde(default)]
    pub track_dirty_pages: bool,
    #[serde(default)]
    pub resume_vm: Option<bool>,
    #[serde(default)]
    pub network_overrides: Option<serde_json::Value>,
}

/// `GET /`.
#[derive(Clone, Debug, Serialize)]
pub struct InstanceInfo {
    pub id: String,
    /// "Not started", "Running" or "Paused".
    pub state: &'static str,
    pub vmm_version: &'static str,
    pub app_name: &'static str,
}

/// An error reply: `{"fault_message": "..."}`.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub fault_message: String,
}

/// The whole configuration: a `--config-file`, and `GET /vm/config`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FullConfig {
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSource>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfig>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub vsock: Option<Vsock>,
    #[serde(default)]
    pub logger: Option<Logger>,
    #[serde(default)]
    pub metrics: Option<Metrics>,
    // What Firecracker has and rvmm does not: accepted when null (as
    // Firecracker's own GET /vm/config writes them), refused otherwise.
    #[serde(default)]
    pub balloon: Option<serde_json::Value>,
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<serde_json::Value>,
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<serde_json::Value>,
    #[serde(default)]
    pub entropy: Option<serde_json::Value>,
    #[serde(default)]
    pub pmem: Vec<serde_json::Value>,
    #[serde(rename = "memory-hotplug", default)]
    pub memory_hotplug: Option<serde_json::Value>,
}

impl FullConfig {
    /// The first part of Firecracker's configuration that rvmm lacks and
    /// this one asks for.
    pub fn unsupported(&self) -> Option<&'static str> {
        [
            (self.balloon.is_some(), "a balloon device"),
            (
                self.cpu_config.is_some(),
                "custom CPU templates (cpu-config)",
            ),
            (self.mmds_config.is_some(), "MMDS (the metadata service)"),
            (self.entropy.is_some(), "an entropy device"),
            (!self.pmem.is_empty(), "pmem devices"),
            (self.memory_hotplug.is_some(), "memory hotplug"),
        ]
        .into_iter()
        .find_map(|(asked, what)| asked.then_some(what))
    }
}
