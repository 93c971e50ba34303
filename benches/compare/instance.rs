//! One idle instance of a peer, started for the memory and density
//! sections: a VM running the halt guest, a runc container or a Docker one
//! idling after it has said it is ready, with what it costs the host.

use std::path::Path;
use std::process::Child;
use std::sync::Arc;

use crate::common::{guest, Entry};
use crate::docker::Docker;
use crate::peers::{vm_command, Bundle, Peer, VmSpec};
use crate::process::{container_memory, overhead, pss_kib, rss_kib, start_until, stop, MemoryKib};

/// The container counterpart of the halt guest: say ready, then idle.
pub const IDLE_CONTAINER: &[&str] = &["/bin/busybox", "sh", "-c", "echo ready; sleep 600"];

pub enum Instance {
    /// A VMM process with this many bytes of guest RAM.
    Vm { vmm: Child, guest_bytes: u64 },
    /// `runc run` of a bundle.
    Runc(Child),
    /// A detached Docker container, by name.
    Docker { name: String, docker: Arc<Docker> },
}

/// What an idle instance needs: the halt guest for VMs, a bundle for runc.
pub struct Idle {
    kernel: std::path::PathBuf,
    bundle: Option<Bundle>,
}

impl Idle {
    pub fn new(peer: &Peer, scratch: &Path) -> Idle {
        Idle {
            kernel: guest("halt", Entry::Pvh),
            bundle: Bundle::for_peer(peer, scratch, IDLE_CONTAINER),
        }
    }

    /// Starts one idle instance of `peer` with `mem_mib` of guest RAM and
    /// waits until it says it is ready.
    pub fn start(&self, peer: &Peer, mem_mib: u64, scratch: &Path) -> Option<Instance> {
        let spec = VmSpec {
            kernel: &self.kernel,
            mem_mib,
            cmdline: "console=ttyS0",
            disks: &[],
            initrd: None,
            net: None,
        };
        match peer {
            Peer::Docker(docker) => Some(Instance::Docker {
                name: docker.start_detached(IDLE_CONTAINER, "ready")?,
                docker: Arc::clone(docker),
            }),
            // The reader thread keeps the console's pipe open while it runs.
            Peer::Container(runtime) => Some(Instance::Runc(
                start_until(self.bundle.as_ref()?.run_command(runtime), "ready")?.child,
            )),
            vm => Some(Instance::Vm {
                vmm: start_until(vm_command(vm, &spec, scratch), "ready")?.child,
                guest_bytes: mem_mib << 20,
            }),
        }
    }
}

impl Instance {
    /// What it costs outside guest RAM, in KiB: a VMM's own memory; a
    /// container's cgroup plus the process that stays beside it (`runc
    /// run`, Docker's shim). The Docker daemon's share is the caller's to
    /// add: it is one process for all containers.
    pub fn memory(&self) -> Option<MemoryKib> {
        match self {
            Instance::Vm { vmm, guest_bytes } => overhead(vmm.id(), *guest_bytes),
            Instance::Runc(runc) => container_memory(runc.id()),
            Instance::Docker { name, docker } => docker.container_memory(name),
        }
    }

    /// Its PSS in KiB, a VMM's guest pages touched included.
    pub fn pss_kib(&self) -> Option<f64> {
        match self {
            Instance::Vm { vmm, .. } => pss_kib(vmm.id()),
            _ => self.memory().map(|m| m.pss),
        }
    }

    /// The RSS of the process that runs it (`runc run`'s alone for runc),
    /// a VMM's guest pages included, in KiB; a Docker container's memory.
    pub fn resident_kib(&self) -> f64 {
        match self {
            Instance::Vm { vmm: child, .. } | Instance::Runc(child) => rss_kib(child.id()),
            Instance::Docker { .. } => self.memory().map_or(0.0, |m| m.rss),
        }
    }

    /// Stops every one of `instances`.
    pub fn stop_all(instances: Vec<Instance>) {
        let mut names = Vec::new();
        for instance in instances {
            match instance {
                Instance::Vm { vmm: child, .. } | Instance::Runc(child) => stop(child),
                Instance::Docker { name, .. } => names.push(name),
            }
        }
        crate::docker::remove(&names);
    }
}

/// The memory of what serves every container of `peer` (Docker's daemon),
/// in KiB; nothing for the other systems.
pub fn daemon_memory(peer: &Peer) -> MemoryKib {
    match peer {
        Peer::Docker(docker) => docker.daemon_memory(),
        _ => MemoryKib::default(),
    }
}
