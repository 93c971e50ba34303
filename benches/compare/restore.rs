//! How fast a ready guest can be had: a snapshot restored (rvmm, Firecracker)
//! against a cold boot of the same guest (every VM peer) and a container
//! start (runc), all interleaved, A B C D ..., after a warm-up.
//!
//! The guest is the echo test guest: it says it is ready, then sends back
//! what reaches its UART. Each VMM with snapshots boots it once through its
//! API, pauses it at its prompt and writes a full snapshot (state file and
//! memory file, Firecracker's layout for both). A sample of a restore is a
//! fresh VMM process with an API socket, `PUT /snapshot/load` with
//! `resume_vm`, a line typed on its console, and the time from the process's
//! start to the guest's answer. A cold boot (or a container) is timed to the
//! same answer: start, wait for its ready line, type, read. Every run is
//! bounded; a run that does not answer costs its sample, not the section
//! (Firecracker now and then loses its guest's output, see
//! ../shared/peers/README.md). The memory files sit in the page cache after
//! the first restore, as they would for a host restoring many VMs. Each run
//! starts once the host has settled (settle.rs says why and how).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use crate::common::api_client::{line_with, request, wait_for_socket};
use crate::common::{guest, read_lines, Entry};
use crate::peers::{vm_command, Bundle, Peer, VmSpec};
use crate::process::rss_kib;
use crate::stats::{Series, Table};
use crate::{iterations, ms, WARMUP};

const MEM_MIB: u64 = 128;
const TYPED: &str = "are you there";
/// How often to try the API socket: finely, since the wait is timed.
const SOCKET_POLL: Duration = Duration::from_micros(200);
/// The container counterpart of the echo guest.
const ECHO_CONTAINER: &[&str] = &[
    "/bin/busybox",
    "sh",
    "-c",
    "echo 'echo: ready'; read line; echo \"$line\"",
];

pub const RESTORE_TITLE: &str = "restore: process start to a restored guest answering";
pub const COLD_TITLE: &str = "cold start: process start to the same guest answering";

/// A guest to snapshot and restore, and how to tell that it answers.
pub struct Guest<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub boot_args: &'a str,
    pub mem_mib: u64,
    /// Printed once it waits for input: the snapshot is taken then.
    pub ready: &'a str,
    /// Typed on its console after a restore...
    pub typed: &'a str,
    /// ... and what it prints in answer.
    pub answer: &'a str,
    /// How long any one step may take.
    pub limit: Duration,
}

/// A process under test with its console on pipes.
struct Running {
    child: Child,
    lines: Receiver<String>,
    limit: Duration,
}

impl Running {
    fn spawn(cmd: Command, limit: Duration) -> Option<Running> {
        Self::spawn_with_log(cmd, limit, Stdio::null())
    }

    /// As [`Running::spawn`], the VMM's own log (stderr) going to `log`.
    fn spawn_with_log(mut cmd: Command, limit: Duration, log: Stdio) -> Option<Running> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .ok()?;
        let lines = read_lines(child.stdout.take()?);
        Some(Running {
            child,
            lines,
            limit,
        })
    }

    /// Waits (bounded) for a console line containing `marker`.
    fn wait_for(&self, marker: &str) -> bool {
        line_with(&self.lines, marker, self.limit).is_ok()
    }

    /// Whether the VMM still runs, or how it ended and the last lines of
    /// its log: what a failed wait leaves to go on.
    fn state(&mut self, log: &Path) -> String {
        match self.child.try_wait() {
            Ok(None) => String::from("the VMM still runs"),
            Ok(Some(status)) => {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
                format!("the VMM ended ({status}); its log ends: {tail}")
            }
            Err(e) => format!("the VMM's state is unknown: {e}"),
        }
    }

    fn type_line(&mut self, line: &str) -> bool {
        let stdin = self.child.stdin.as_mut();
        stdin.is_some_and(|s| writeln!(s, "{line}").and_then(|_| s.flush()).is_ok())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SIGKILL: Firecracker now and then ignores SIGTERM.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `peer` takes and loads snapshots through Firecracker's API.
pub fn has_snapshots(peer: &Peer) -> bool {
    matches!(peer, Peer::Rvmm | Peer::Firecracker(_))
}

/// The binary of a peer that has snapshots, with the arguments that give
/// it an API socket at `socket`.
fn api_command(peer: &Peer, socket: &Path) -> Option<Command> {
    let mut cmd = match peer {
        Peer::Rvmm => Command::new(crate::common::rvmm_binary()),
        Peer::Firecracker(bin) => {
            let mut c = Command::new(bin);
            c.args(["--level", "Error"]);
            c
        }
        _ => return None,
    };
    cmd.arg("--api-sock").arg(socket);
    Some(cmd)
}

fn api(socket: &Path, method: &str, path: &str, body: &str) -> Result<(), String> {
    // The client panics on a broken connection; that is one failed run.
    let reply = std::panic::catch_unwind(|| request(socket, method, path, body))
        .map_err(|_| format!("{method} {path}: the connection broke"))?;
    match reply {
        (204, _) => Ok(()),
        (status, body) => Err(format!("{method} {path}: {status} {body}")),
    }
}

/// A snapshot of `guest` once it is ready: (state file, memory file).
pub fn make_snapshot(
    peer: &Peer,
    guest: &Guest,
    scratch: &Path,
) -> Result<(PathBuf, PathBuf), String> {
    let name = peer.name();
    let socket = scratch.join(format!("{name}-snapshot.api"));
    let _ = std::fs::remove_file(&socket);
    let cmd = api_command(peer, &socket).ok_or("no snapshots")?;
    let log_path = scratch.join(format!("{name}-snapshot-boot.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| format!("cannot write its log: {e}"))?;
    let mut vm = Running::spawn_with_log(cmd, guest.limit, log.into()).ok_or("cannot start it")?;
    if !wait_for_socket(&socket, guest.limit, SOCKET_POLL) {
        return Err("no API socket".into());
    }
    let initrd = guest
        .initrd
        .map(|i| format!(r#", "initrd_path": "{}""#, i.display()))
        .unwrap_or_default();
    let boot = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "{}"{initrd}}}"#,
        guest.kernel.display(),
        guest.boot_args
    );
    let machine = format!(r#"{{"vcpu_count": 1, "mem_size_mib": {}}}"#, guest.mem_mib);
    api(&socket, "PUT", "/boot-source", &boot)?;
    api(&socket, "PUT", "/machine-config", &machine)?;
    api(
        &socket,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    )?;
    if !vm.wait_for(guest.ready) {
        return Err(format!(
            "the guest never printed {:?}; {}",
            guest.ready,
            vm.state(&log_path)
        ));
    }
    let (state, memory) = (
        scratch.join(format!("{name}.snapshot")),
        scratch.join(format!("{name}.mem")),
    );
    api(&socket, "PATCH", "/vm", r#"{"state": "Paused"}"#)?;
    let create = format!(
        r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        memory.display()
    );
    api(&socket, "PUT", "/snapshot/create", &create)?;
    drop(vm);
    let _ = std::fs::remove_file(&socket);
    Ok((state, memory))
}

/// What one restore measured (ms from process start, KiB after it answered).
pub struct RestoreSample {
    pub loaded: f64,
    pub answered: f64,
    pub rss_kib: f64,
}

/// One restore of `files` on a fresh `peer` process, until `guest` answers.
pub fn restore_once(
    peer: &Peer,
    guest: &Guest,
    files: &(PathBuf, PathBuf),
    scratch: &Path,
) -> Option<RestoreSample> {
    let socket = scratch.join(format!("{}-restore.api", peer.name()));
    let _ = std::fs::remove_file(&socket);
    crate::settle::settle();
    let start = Instant::now();
    let mut vm = Running::spawn(api_command(peer, &socket)?, guest.limit)?;
    if !wait_for_socket(&socket, guest.limit, SOCKET_POLL) {
        return None;
    }
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_path": "{}", "backend_type": "File"}}, "resume_vm": true}}"#,
        files.0.display(),
        files.1.display()
    );
    if let Err(e) = api(&socket, "PUT", "/snapshot/load", &load) {
        eprintln!("restore: {}: {e}", peer.name());
        return None;
    }
    let loaded = ms(start.elapsed());
    if !(vm.type_line(guest.typed) && vm.wait_for(guest.answer)) {
        eprintln!(
            "restore: {}: the restored guest did not answer",
            peer.name()
        );
        return None;
    }
    let answered = ms(start.elapsed());
    let pid = vm.child.id();
    let sample = RestoreSample {
        loaded,
        answered,
        rss_kib: rss_kib(pid),
    };
    let _ = std::fs::remove_file(&socket);
    Some(sample)
}

/// A cold start of `peer` to the same answer, in ms from process start.
fn cold_once(peer: &Peer, guest: &Guest, bundle: Option<&Bundle>, scratch: &Path) -> Option<f64> {
    let spec = VmSpec {
        kernel: guest.kernel,
        mem_mib: guest.mem_mib,
        cmdline: guest.boot_args,
        disks: &[],
        initrd: guest.initrd,
        net: None,
    };
    let cmd = match peer {
        Peer::Container(runtime) => bundle?.run_command(runtime),
        Peer::Docker(docker) => docker.run_command(ECHO_CONTAINER, true),
        vm => vm_command(vm, &spec, scratch),
    };
    crate::settle::settle();
    let start = Instant::now();
    let mut run = Running::spawn(cmd, guest.limit)?;
    let answered =
        run.wait_for(guest.ready) && run.type_line(guest.typed) && run.wait_for(guest.answer);
    answered.then(|| ms(start.elapsed()))
}

pub fn restore(peers: &[Peer], scratch: &Path) -> Vec<Table> {
    let kernel = guest("echo", Entry::Pvh);
    let echo = Guest {
        kernel: &kernel,
        initrd: None,
        boot_args: "console=ttyS0",
        mem_mib: MEM_MIB,
        ready: "echo: ready",
        typed: TYPED,
        // The echo guest's answer is what it was sent.
        answer: TYPED,
        limit: Duration::from_secs(10),
    };
    let snapshots: Vec<(Peer, (PathBuf, PathBuf))> = peers
        .iter()
        .filter(|p| has_snapshots(p))
        .filter_map(|p| match make_snapshot(p, &echo, scratch) {
            Ok(files) => Some((p.clone(), files)),
            Err(e) => {
                eprintln!("restore: no snapshot of {}: {e}; left out", p.name());
                None
            }
        })
        .collect();
    let bundles: Vec<Option<Bundle>> = peers
        .iter()
        .map(|p| Bundle::for_peer(p, scratch, ECHO_CONTAINER))
        .collect();
    let series = |names: &mut dyn Iterator<Item = &'static str>| -> Vec<Series> {
        names.map(Series::new).collect()
    };
    let mut answered = Table::new(RESTORE_TITLE, "ms", false);
    let mut loaded = Table::new(
        "restore: process start to the snapshot loaded (API answered)",
        "ms",
        false,
    );
    // The memory file is mapped, not anonymous memory: the bench's overhead
    // figure (RSS outside anonymous guest RAM) would count the guest pages
    // touched for one VMM and not another. RSS counts them for both.
    let mut resident = Table::new(
        "restore: resident memory of a restored 128 MiB guest's VMM, touched guest pages included (RSS)",
        "MiB",
        false,
    );
    for t in [&mut answered, &mut loaded, &mut resident] {
        t.series = series(&mut snapshots.iter().map(|(p, _)| p.name()));
    }
    let mut cold = Table::new(COLD_TITLE, "ms", false);
    cold.series = series(&mut peers.iter().map(Peer::name));
    for round in 0..WARMUP + iterations() {
        for (i, (peer, files)) in snapshots.iter().enumerate() {
            let Some(s) = restore_once(peer, &echo, files, scratch) else {
                continue;
            };
            if round >= WARMUP {
                answered.series[i].samples.push(s.answered);
                loaded.series[i].samples.push(s.loaded);
                resident.series[i].samples.push(s.rss_kib / 1024.0);
            }
        }
        for (i, peer) in peers.iter().enumerate() {
            let Some(t) = cold_once(peer, &echo, bundles[i].as_ref(), scratch) else {
                eprintln!("restore: {}: a cold start did not answer", peer.name());
                continue;
            };
            if round >= WARMUP {
                cold.series[i].samples.push(t);
            }
        }
    }
    crate::cleanup_containers();
    let mut tables = vec![answered, loaded, cold, resident];
    for t in &mut tables {
        t.series.retain(|s| !s.samples.is_empty());
    }
    tables
}
