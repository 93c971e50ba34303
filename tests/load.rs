//! Load: many VMs at once, each with its own disk, in several rounds. Every
//! guest must read exactly its own disk and write only its own pattern, and
//! nothing may be left behind: no rvmm process, no descriptor in this one.
//! (Alone in its test binary so the descriptor count is this test's own.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::{
    blk_write_pattern, fnv1a64_words, guest, pseudo_random_bytes, require_kvm, run_command,
    rvmm_binary, scratch, Entry,
};

const VMS: usize = 200;
const ROUNDS: usize = 3;
const DISK_BYTES: usize = 64 << 10;
/// Two hundred guests share two host CPUs, and on PVM hosts their code is
/// emulated: a generous limit, so only a hang fails.
const LIMIT: Duration = Duration::from_secs(900);

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// This process's thread count once helper threads have had a moment to end.
fn settled_threads(expected: usize) -> usize {
    let count = || std::fs::read_dir("/proc/self/task").unwrap().count();
    for _ in 0..50 {
        if count() <= expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    count()
}

/// rvmm processes whose parent is this test.
fn rvmm_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let after_comm = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
            stat.contains("(rvmm)") && after_comm.split(' ').nth(1) == Some(me.as_str())
        })
        .collect()
}

#[test]
fn two_hundred_vms_with_their_own_disks_three_rounds() {
    require_kvm();
    let kernel = guest("blk", Entry::Linux64);
    let descriptors_before = open_descriptors();
    let threads_before = settled_threads(0);
    for round in 0..ROUNDS {
        let disks: Vec<(std::path::PathBuf, Vec<u8>)> = (0..VMS)
            .map(|vm| {
                let path = scratch(&format!("load-{round}-{vm}.img"));
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
            std::fs::remove_file(path).unwrap();
        }
        assert_eq!(
            rvmm_children(),
            Vec::<u32>::new(),
            "round {round}: rvmm processes left behind"
        );
    }
    assert_eq!(
        open_descriptors(),
        descriptors_before,
        "file descriptors leaked in the test process"
    );
    assert_eq!(
        settled_threads(threads_before),
        threads_before,
        "threads left behind in the test process"
    );
}
