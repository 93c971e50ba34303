//! Load: many VMs at once, each with its own disk, in several rounds. Every
//! guest must read exactly its own disk and write only its own pattern, and
//! rvmm must leave nothing behind: no rvmm process, no lock on a disk, no
//! file beside the disks; and while they run, no rvmm has more threads than
//! its vCPU and event loop.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    blk_write_pattern, fnv1a64_words, guest, pseudo_random_bytes, require_kvm, run_command,
    rvmm_binary, scratch, thread_modes, Entry,
};

const VMS: usize = 200;
const ROUNDS: usize = 3;
const DISK_BYTES: usize = 64 << 10;
/// Two hundred guests share two host CPUs, and on PVM hosts their code is
/// emulated: a generous limit, so only a hang fails.
const LIMIT: Duration = Duration::from_secs(900);
/// One vCPU thread and the event loop (main), and while it sets up the
/// PIT (a few milliseconds after start) the thread that does it.
const RVMM_THREADS: usize = 3;

/// The rvmm processes whose arguments name a file in `dir` (this test's
/// own scratch directory), with their threads' names.
fn rvmm_processes_using(dir: &Path) -> Vec<(u32, Vec<String>)> {
    let marker = dir.to_str().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(marker)
        })
        .map(|pid| {
            (
                pid,
                thread_modes(pid)
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect(),
            )
        })
        .collect()
}

/// Takes and drops an exclusive lock on `path`: fails while an rvmm holds it.
fn lock_is_free(path: &Path) -> bool {
    let file = std::fs::File::open(path).unwrap();
    file.try_lock().is_ok()
}

#[test]
fn two_hundred_vms_with_their_own_disks_three_rounds() {
    require_kvm();
    let kernel = guest("blk", Entry::Linux64);
    let dir = scratch("load").with_extension("d");
    std::fs::create_dir_all(&dir).unwrap();
    let mut most_threads = Vec::new();
    let mut sampled = 0;
    for round in 0..ROUNDS {
        let disks: Vec<(PathBuf, Vec<u8>)> = (0..VMS)
            .map(|vm| {
                let path = dir.join(format!("load-{round}-{vm}.img"));
                let bytes = pseudo_random_bytes(DISK_BYTES, (round * VMS + vm) as u64 + 100);
                std::fs::write(&path, &bytes).unwrap();
                (path, bytes)
            })
            .collect();
        let runs: Vec<_> = disks
            .iter()
            .enumerate()
            .map(|(vm, (path, _))| {
                let mut command = Command::new(rvmm_binary());
                command.args([
                    "--kernel",
                    kernel.to_str().unwrap(),
                    "--mem",
                    "32",
                    "--cmdline",
                    &format!("console=ttyS0 blktest.write blktest.tag={:x}", vm as u8),
                    "--disk",
                    path.to_str().unwrap(),
                ]);
                std::thread::spawn(move || run_command(command, LIMIT))
            })
            .collect();
        // While they run: no rvmm grows threads it should not have.
        while runs.iter().any(|r| !r.is_finished()) {
            for (_, threads) in rvmm_processes_using(&dir) {
                if threads.len() > most_threads.len() {
                    most_threads = threads;
                }
                sampled += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for (vm, run) in runs.into_iter().enumerate() {
            let run = run.join().unwrap();
            let (path, bytes) = &disks[vm];
            assert_eq!(
                run.code(),
                Some(0),
                "round {round}, VM {vm}: stdout:\n{}\nstderr:\n{}",
                run.stdout,
                run.stderr
            );
            let read = format!(
                "blk vda: read status {:#018x} fnv1a {:#018x}",
                0,
                fnv1a64_words(bytes)
            );
            assert!(
                run.stdout.contains(&read),
                "round {round}, VM {vm} did not read its own disk:\n{}",
                run.stdout
            );
            assert!(
                run.stdout
                    .contains("readback status 0x0000000000000000 matches"),
                "round {round}, VM {vm}:\n{}",
                run.stdout
            );
            let mut expected = bytes.clone();
            expected[1024..1024 + 4096].copy_from_slice(&blk_write_pattern(u32::from(vm as u8)));
            assert!(
                std::fs::read(path).unwrap() == expected,
                "round {round}: disk {vm} holds something other than its own data and its own VM's write"
            );
            assert!(
                lock_is_free(path),
                "round {round}: disk {vm} is still locked after its rvmm exited"
            );
        }
        assert_eq!(
            rvmm_processes_using(&dir),
            Vec::new(),
            "round {round}: rvmm processes left behind"
        );
        // rvmm made no file of its own beside the disks (locks, sockets, temporaries).
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut made: Vec<String> = disks
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        made.sort();
        assert_eq!(left, made, "round {round}: files beside the disks");
        for (path, _) in &disks {
            std::fs::remove_file(path).unwrap();
        }
    }
    assert!(
        sampled > 0,
        "no running rvmm was ever seen: the thread check saw nothing"
    );
    assert!(
        most_threads.len() <= RVMM_THREADS,
        "an rvmm with one vCPU had these threads: {most_threads:?}"
    );
    eprintln!(
        "{sampled} samples of running rvmm processes, at most these threads: {most_threads:?}"
    );
}
