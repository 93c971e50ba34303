//! Docker Engine, the container most people mean, as a peer beside runc:
//! Debian's docker.io (installed if missing), its daemon (started here if
//! none runs, and stopped again when the bench is done) and a busybox
//! image imported from a local root file system, since no registry can be
//! reached.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::peers::ensure_package;
use crate::process::{cgroup_memory, overhead, MemoryKib};

const CLI: &str = "/usr/bin/docker";
const DAEMON: &str = "/usr/sbin/dockerd";
const IMAGE: &str = "rvmm-bench-busybox:latest";
/// Every container the bench starts has a name with this in front.
pub const NAME_PREFIX: &str = "rvmm-bench-";
/// The daemon's own processes, whose growth per container is charged to it.
const DAEMON_COMMANDS: &[&str] = &["dockerd", "containerd"];

#[derive(Debug)]
pub struct Docker {
    /// `docker version`'s server version.
    pub version: String,
    /// The dockerd this bench started, stopped when this is dropped.
    started: Mutex<Option<Child>>,
}

impl Docker {
    /// Docker ready to run the bench's image, or why not.
    pub fn set_up(scratch: &Path) -> Result<Docker, String> {
        if !ensure_package("docker.io", DAEMON) {
            return Err(String::from("Debian's docker.io did not install"));
        }
        let mut docker = Docker {
            version: String::new(),
            started: Mutex::new(None),
        };
        if server_version().is_none() {
            let log = std::fs::File::create(scratch.join("dockerd.log"))
                .map_err(|e| format!("cannot write dockerd's log: {e}"))?;
            let daemon = Command::new(DAEMON)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start {DAEMON}: {e}"))?;
            *docker.started.lock().unwrap() = Some(daemon);
            eprintln!(
                "bench setup: started dockerd (log: {})",
                scratch.join("dockerd.log").display()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        docker.version = loop {
            if let Some(version) = server_version() {
                break version;
            }
            if Instant::now() > deadline {
                return Err(String::from(
                    "dockerd did not answer within 60 s (see its log)",
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        import_image(scratch)?;
        eprintln!(
            "bench setup: Docker Engine {} with image {IMAGE}",
            docker.version
        );
        Ok(docker)
    }

    /// `docker run --rm` of `args` in the bench's image, attached: its
    /// stdout is the container's, and with `stdin` its stdin too.
    pub fn run_command(&self, args: &[&str], stdin: bool) -> Command {
        let mut c = Command::new(CLI);
        c.args(["run", "--rm", "--name", &unique_name()]);
        if stdin {
            c.arg("-i");
        }
        c.arg(IMAGE).args(args);
        c
    }

    /// Starts a detached container running `args` and waits until it has
    /// printed `marker`; its name, or None.
    pub fn start_detached(&self, args: &[&str], marker: &str) -> Option<String> {
        let name = unique_name();
        let started = Command::new(CLI)
            .args(["run", "-d", "--rm", "--name", &name, IMAGE])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !started.success() {
            return None;
        }
        let deadline = Instant::now() + crate::process::RUN_LIMIT;
        while Instant::now() < deadline {
            let logs = Command::new(CLI).args(["logs", &name]).output().ok()?;
            if String::from_utf8_lossy(&logs.stdout).contains(marker) {
                return Some(name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        remove(&[name]);
        None
    }

    /// The memory one running container costs, in KiB: its cgroup and its
    /// containerd shim, which stays beside it for its life.
    pub fn container_memory(&self, name: &str) -> Option<MemoryKib> {
        let pid = inspect(name, "{{.State.Pid}}")?.parse::<u32>().ok()?;
        let shim = parent(pid)?;
        Some(cgroup_memory(pid)? + overhead(shim, u64::MAX)?)
    }

    /// The memory of the daemon's processes together, in KiB.
    pub fn daemon_memory(&self) -> MemoryKib {
        processes_named(DAEMON_COMMANDS)
            .into_iter()
            .filter_map(|pid| overhead(pid, u64::MAX))
            .fold(MemoryKib::default(), |sum, m| sum + m)
    }

    /// The image's size as Docker reports it.
    pub fn image_bytes(&self) -> Option<u64> {
        Command::new(CLI)
            .args(["image", "inspect", "--format", "{{.Size}}", IMAGE])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        remove_all();
        if let Some(mut daemon) = self.started.lock().unwrap().take() {
            // SAFETY: kill(2) on the daemon this bench started and still owns.
            unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = daemon.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
    }
}

/// Removes the named containers, stopping them first.
pub fn remove(names: &[String]) {
    if names.is_empty() {
        return;
    }
    let _ = Command::new(CLI)
        .args(["rm", "-f"])
        .args(names)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes every container the bench started.
pub fn remove_all() {
    let Ok(out) = Command::new(CLI)
        .args(["ps", "-aq", "--filter", &format!("name={NAME_PREFIX}")])
        .output()
    else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    remove(&ids);
}

fn server_version() -> Option<String> {
    let out = Command::new(CLI)
        .args(["version", "--format", "{{.Server.Version}}"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !version.is_empty()).then_some(version)
}

/// `docker import` of a root file system holding busybox alone, as the
/// runc bundles have.
fn import_image(scratch: &Path) -> Result<(), String> {
    let root = scratch.join("docker-rootfs");
    std::fs::create_dir_all(root.join("bin")).map_err(|e| e.to_string())?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .map_err(|e| format!("cannot copy /bin/busybox ({e}); install busybox-static"))?;
    let tar: PathBuf = scratch.join("docker-rootfs.tar");
    let packed = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| format!("cannot run tar: {e}"))?;
    let imported = Command::new(CLI)
        .arg("import")
        .arg(&tar)
        .arg(IMAGE)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run docker import: {e}"))?;
    if packed.success() && imported.success() {
        Ok(())
    } else {
        Err(format!("docker import of {} failed", tar.display()))
    }
}

fn inspect(name: &str, format: &str) -> Option<String> {
    let out = Command::new(CLI)
        .args(["inspect", "--format", format, name])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it do not.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn processes_named(commands: &[&str]) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| commands.contains(&c.trim()))
        })
        .collect()
}

fn unique_name() -> String {
    format!("{NAME_PREFIX}{}", crate::peers::unique())
}
