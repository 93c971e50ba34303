//! One idle instance of a peer, started for the memory and density
//! sections: a VM running the halt guest, a runc container or a Docker one
//! idling after it has said it is ready, with what it costs the host.

use std::path::Path;
use std::process::Child;

use crate::common::{guest, Entry};
use crate::peers::{vm_command, Bundle, Peer, VmSpec};
use crate::process::{container_memory, overhead, start_until, stop, MemoryKib};

/// The container counterpart of the halt guest: say ready, then idle.
pub const IDLE_CONTAINER: &[&str] = &["/bin/busybox", "sh", "-c", "echo ready; sleep 600"];

pub enum Instance {
    /// A VMM process (guest RAM of this many bytes) or `runc run`.
    Process { child: Child, guest_bytes: u64 },
    /// A detached Docker container, by name.
    Docker(String),
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
        let cmd = match peer {
            Peer::Docker(docker) => {
                return docker
                    .start_detached(IDLE_CONTAINER, "ready")
                    .map(Instance::Docker)
            }
            Peer::Container(runtime) => self.bundle.as_ref()?.run_command(runtime),
            vm => vm_command(vm, &spec, scratch),
        };
        let guest_bytes = if peer.is_vm() {
            mem_mib << 20
        } else {
            u64::MAX
        };
        // The reader thread keeps the console's pipe open while it runs.
        Some(Instance::Process {
            child: start_until(cmd, "ready")?.child,
            guest_bytes,
        })
    }
}

impl Instance {
    /// What it costs outside guest RAM, in KiB: a VMM's own memory; a
    /// container's cgroup plus the process that stays beside it (`runc
    /// run`, Docker's shim). The Docker daemon's share is the caller's to
    /// add: it is one process for all containers.
    pub fn memory(&self, peer: &Peer) -> Option<MemoryKib> {
        match (self, peer) {
            (Instance::Docker(name), Peer::Docker(docker)) => docker.container_memory(name),
            (Instance::Process { child, .. }, Peer::Container(_)) => container_memory(child.id()),
            (Instance::Process { child, guest_bytes }, _) => overhead(child.id(), *guest_bytes),
            _ => None,
        }
    }

    /// Stops every one of `instances`.
    pub fn stop_all(instances: Vec<Instance>) {
        let mut names = Vec::new();
        for instance in instances {
            match instance {
                Instance::Process { child, .. } => stop(child),
                Instance::Docker(name) => names.push(name),
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
