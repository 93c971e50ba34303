//! virtio-blk end to end: the polled test guest reads, checksums and writes
//! disks through rvmm, and the test checks every byte on the host.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    blk_write_pattern, fnv1a64_words, guest, pseudo_random_bytes, require_kvm, rvmm, scratch,
    Console, Entry,
};

/// Guest code is emulated on PVM hosts, so reading 64 MiB takes a while there.
const LIMIT: Duration = Duration::from_secs(600);
const MIB: usize = 1 << 20;

fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{stdout}"))
}

fn hex(v: u64) -> String {
    format!("{v:#018x}")
}

#[test]
fn guest_reads_writes_and_flushes_through_virtio_blk() {
    require_kvm();
    let kernel = guest("blk", Entry::Linux64);
    let data = scratch("data.img");
    let data_bytes = pseudo_random_bytes(64 * MIB, 1);
    std::fs::write(&data, &data_bytes).unwrap();
    let readonly = scratch("readonly.img");
    let readonly_bytes = pseudo_random_bytes(MIB, 2);
    std::fs::write(&readonly, &readonly_bytes).unwrap();

    let run = rvmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--mem",
            "128",
            "--cmdline",
            "console=ttyS0 blktest.write",
            "--disk",
            data.to_str().unwrap(),
            "--disk",
            &format!("{},ro,id=second-disk", readonly.display()),
        ],
        LIMIT,
    );
    assert_eq!(
        run.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let out = &run.stdout;
    assert!(out.contains("blk: done, 0x0000000000000002 disks"), "{out}");

    // vda: 64 MiB of random bytes, writable.
    assert_eq!(
        line(out, "blk vda: capacity"),
        format!("blk vda: capacity {} rw", hex(64 * MIB as u64 / 512))
    );
    assert_eq!(
        line(out, "blk vda: id"),
        format!("blk vda: id status {} id rvmm-vda", hex(0))
    );
    assert_eq!(
        line(out, "blk vda: read"),
        format!(
            "blk vda: read status {} fnv1a {}",
            hex(0),
            hex(fnv1a64_words(&data_bytes))
        )
    );
    assert_eq!(
        line(out, "blk vda: past-end"),
        format!("blk vda: past-end status {}", hex(1))
    );
    assert_eq!(
        line(out, "blk vda: write"),
        format!(
            "blk vda: write status {0} flush status {0} readback status {0} matches",
            hex(0)
        )
    );
    let after = std::fs::read(&data).unwrap();
    assert_eq!(after.len(), data_bytes.len());
    assert_eq!(
        after[1024..1024 + 4096],
        blk_write_pattern(0)[..],
        "the flushed pattern is on the host file"
    );
    assert_eq!(after[..1024], data_bytes[..1024]);
    assert_eq!(
        after[1024 + 4096..],
        data_bytes[1024 + 4096..],
        "nothing else changed"
    );

    // vdb: read-only, with its own ID.
    assert_eq!(
        line(out, "blk vdb: capacity"),
        format!("blk vdb: capacity {} ro", hex(MIB as u64 / 512))
    );
    assert_eq!(
        line(out, "blk vdb: id"),
        format!("blk vdb: id status {} id second-disk", hex(0))
    );
    assert_eq!(
        line(out, "blk vdb: read"),
        format!(
            "blk vdb: read status {} fnv1a {}",
            hex(0),
            hex(fnv1a64_words(&readonly_bytes))
        )
    );
    assert!(
        line(out, "blk vdb: write").starts_with(&format!(
            "blk vdb: write status {} flush status {}",
            hex(1),
            hex(0)
        )),
        "a read-only disk must refuse the write: {out}"
    );
    assert_eq!(
        std::fs::read(&readonly).unwrap(),
        readonly_bytes,
        "read-only disk changed"
    );
    let _ = std::fs::remove_file(&data);
}

fn assert_refused(args: &[&str], expected: &str) {
    let run = rvmm(args, Duration::from_secs(30));
    assert_eq!(run.code(), Some(1), "rvmm {args:?}: {}", run.stderr);
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("rvmm: error: ") && last.contains(expected),
        "expected {expected:?} in {last:?}"
    );
    assert!(!run.stderr.contains("panicked"));
}

#[test]
fn bad_disks_are_refused_with_a_clear_error() {
    require_kvm();
    let kernel = guest("hello", Entry::Pvh);
    let k = kernel.to_str().unwrap();
    assert_refused(
        &["--kernel", k, "--disk", "/nonexistent/disk.img"],
        "disk /nonexistent/disk.img does not exist",
    );
    let dir = scratch("disk-dir");
    std::fs::create_dir_all(&dir).unwrap();
    assert_refused(
        &["--kernel", k, "--disk", dir.to_str().unwrap()],
        "is a directory",
    );
    let odd = scratch("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    assert_refused(
        &["--kernel", k, "--disk", odd.to_str().unwrap()],
        "not a whole number of 512-byte sectors",
    );
    assert_refused(
        &["--kernel", k, "--disk", "x.img,rw"],
        "--disk option 'rw' is not known",
    );
    assert_refused(
        &["--kernel", k, "--disk", "x.img,id=this-id-is-far-too-long"],
        "longer than 20 bytes",
    );
    let many: Vec<String> = (0..20)
        .flat_map(|_| ["--disk".to_string(), odd.display().to_string()])
        .collect();
    let mut args = vec!["--kernel", k];
    args.extend(many.iter().map(String::as_str));
    assert_refused(&args, "at most 19");
}

#[test]
fn a_disk_in_use_by_another_vm_is_refused() {
    require_kvm();
    let disk = scratch("shared.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let echo = guest("echo", Entry::Linux64);
    let mut first = Console::start(
        &[
            "--kernel",
            echo.to_str().unwrap(),
            "--disk",
            disk.to_str().unwrap(),
        ],
        "disk-owner",
    );
    first.expect("echo: ready", Duration::from_secs(30));
    let hello = guest("hello", Entry::Pvh);
    assert_refused(
        &[
            "--kernel",
            hello.to_str().unwrap(),
            "--disk",
            disk.to_str().unwrap(),
        ],
        "in use by another process",
    );
    assert_refused(
        &[
            "--kernel",
            hello.to_str().unwrap(),
            "--disk",
            &format!("{},ro", disk.display()),
        ],
        "in use by another process",
    );
    first.send("\x04");
    assert_eq!(first.wait_exit(Duration::from_secs(30)).code(), Some(0));
    // Once the first VM is gone the disk is free again.
    let run = rvmm(
        &[
            "--kernel",
            hello.to_str().unwrap(),
            "--disk",
            disk.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
}

#[test]
fn a_disk_path_with_a_comma_is_written_with_two() {
    require_kvm();
    let kernel = guest("blk", Entry::Linux64);
    let disk = scratch("comma,in,name.img");
    let bytes = pseudo_random_bytes(MIB, 8);
    std::fs::write(&disk, &bytes).unwrap();
    let spec = format!("{},ro", disk.to_str().unwrap().replace(',', ",,"));
    let run = rvmm(
        &["--kernel", kernel.to_str().unwrap(), "--disk", &spec],
        LIMIT,
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let read = line(&run.stdout, "blk vda: read status");
    assert_eq!(
        read,
        format!(
            "blk vda: read status 0x0000000000000000 fnv1a {}",
            hex(fnv1a64_words(&bytes))
        )
    );
}

#[test]
fn a_guest_flooding_its_disk_cannot_delay_a_stop() {
    require_kvm();
    let kernel = guest("flood", Entry::Linux64);
    // Sparse: the guest's 200 MiB reads must be in range to be served.
    let disk = scratch("flood.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(256 * MIB as u64)
        .unwrap();
    let mut vm = Console::start(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--disk",
            disk.to_str().unwrap(),
        ],
        "flood",
    );
    vm.expect("flood: started", Duration::from_secs(30));
    // Let the flood run, so the event loop is busy with it when the signal comes.
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    // SAFETY: kill(2) on the child this test started and still owns.
    let signalled = unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    assert_eq!(signalled, 0);
    let status = vm.wait_exit(Duration::from_secs(10));
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(143), "{}", vm.stderr());
    assert!(
        took < Duration::from_millis(500),
        "rvmm took {took:?} to stop while its guest flooded the disk"
    );
    eprintln!("flooding guest: SIGTERM ended rvmm in {took:?}");
}

#[test]
fn a_hostile_guest_cannot_crash_rvmm_or_touch_the_disk() {
    require_kvm();
    let kernel = guest("hostile", Entry::Linux64);
    let disk = scratch("hostile.img");
    let bytes = pseudo_random_bytes(MIB, 4);
    std::fs::write(&disk, &bytes).unwrap();
    let run = rvmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--disk",
            disk.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(
        run.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert!(run.stdout.contains("hostile: survived"), "{}", run.stdout);
    // Guest RAM the guest touched counts too; what matters is that queue
    // sizes and addresses it made up did not make rvmm allocate by them.
    assert!(
        run.max_rss_kib < 64 << 10,
        "rvmm grew to {} KiB under the hostile guest",
        run.max_rss_kib
    );
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(&disk).unwrap(),
        bytes,
        "no valid write was sent, so the disk must not change"
    );
}

/// Arguments that run the blk guest's write-and-flush loop on `disk`.
fn loop_guest<'a>(kernel: &'a Path, disk: &'a Path) -> [&'a str; 6] {
    [
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0 blktest.loop",
        "--disk",
        disk.to_str().unwrap(),
    ]
}

/// The `blk flushed 0x..` lines the loop guest printed.
fn flushed_sectors(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.trim_end().strip_prefix("blk flushed 0x"))
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .collect()
}

/// Every sector the loop guest saw flushed holds its pattern in `bytes`.
fn assert_on_disk(flushed: &[u64], bytes: &[u8], what: &str) {
    for &k in flushed {
        let sector = &bytes[k as usize * 512..(k as usize + 1) * 512];
        let expected: Vec<u8> = (0..512u64).map(|i| (k * 7 + i) as u8).collect();
        assert_eq!(
            sector,
            &expected[..],
            "{what}: flushed sector {k} is not on disk"
        );
    }
}

#[test]
fn every_flushed_write_survives_sigkill() {
    require_kvm();
    let kernel = guest("blk", Entry::Linux64);
    // Kill twenty times at different points; each time, every sector the
    // guest saw flushed must be on the host file with its pattern.
    for round in 0..20u64 {
        let kill_after = round * round * 2 + 1;
        let disk = scratch(&format!("durable-{round}.img"));
        std::fs::write(&disk, vec![0u8; MIB]).unwrap();
        let mut vm = Console::start(&loop_guest(&kernel, &disk), &format!("durable-{round}"));
        vm.expect(&format!("blk flushed {}", hex(kill_after)), LIMIT);
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(vm.child.id() as i32, libc::SIGKILL) };
        let status = vm.wait_exit(Duration::from_secs(30));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        let flushed = flushed_sectors(&vm.seen);
        assert!(flushed.len() as u64 > kill_after);
        assert_on_disk(
            &flushed,
            &std::fs::read(&disk).unwrap(),
            &format!("round {round}"),
        );
        let _ = std::fs::remove_file(&disk);
    }
}

/// A small tmpfs mounted for one test, unmounted on drop.
struct SmallTmpfs(std::path::PathBuf);

impl SmallTmpfs {
    fn mount(name: &str, size: &str) -> SmallTmpfs {
        let dir = scratch(name);
        std::fs::create_dir_all(&dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("mount(8) is needed to make a small file system");
        assert!(
            status.success(),
            "cannot mount a tmpfs at {dir:?}: run the tests as root"
        );
        SmallTmpfs(dir)
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_host_disk_gives_the_guest_an_io_error() {
    require_kvm();
    // A 2 MiB sparse image on a 256 KiB file system: the host runs out of
    // space long before the guest reaches the end of its disk.
    let fs = SmallTmpfs::mount("small-fs", "256k");
    let disk = fs.0.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(2 * MIB as u64)
        .unwrap();
    let kernel = guest("blk", Entry::Linux64);
    let run = rvmm(&loop_guest(&kernel, &disk), LIMIT);
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    let stop = line(&run.stdout, "blk loop stopped at");
    assert!(
        stop.ends_with(&format!(
            "write status {} flush status {}",
            hex(1),
            hex(0xff)
        )),
        "the write that found the host disk full must fail with VIRTIO_BLK_S_IOERR: {stop}"
    );
    assert!(
        run.stdout.contains("blk: done"),
        "the guest must go on after the error: {}",
        run.stdout
    );
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("failed on the host"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning for the person running rvmm: {}",
        run.stderr
    );
    assert!(
        warnings[0].contains("No space left on device"),
        "{}",
        warnings[0]
    );
    let lines: Vec<String> = run.stdout.lines().map(String::from).collect();
    let flushed = flushed_sectors(&lines);
    assert!(
        flushed.len() > 16,
        "the file system held some sectors: {stop}"
    );
    assert_on_disk(&flushed, &std::fs::read(&disk).unwrap(), "full disk");
}

/// A loop device over a scratch file, detached on drop.
struct LoopDevice(String);

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn a_host_block_device_works_as_a_disk() {
    require_kvm();
    let backing = scratch("loop-backing.img");
    let bytes = pseudo_random_bytes(8 * MIB, 5);
    std::fs::write(&backing, &bytes).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["--find", "--show"])
        .arg(&backing)
        .output()
        .expect("losetup (util-linux) is needed to test host block devices");
    assert!(
        out.status.success(),
        "cannot attach a loop device ({}); run the tests as root on a host with loop devices",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let device = LoopDevice(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let kernel = guest("blk", Entry::Linux64);
    let run = rvmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--disk",
            &format!("{},ro", device.0),
        ],
        LIMIT,
    );
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        line(&run.stdout, "blk vda: capacity"),
        format!("blk vda: capacity {} ro", hex(8 * MIB as u64 / 512))
    );
    assert_eq!(
        line(&run.stdout, "blk vda: read"),
        format!(
            "blk vda: read status {} fnv1a {}",
            hex(0),
            hex(fnv1a64_words(&bytes))
        )
    );
    drop(device);
    let _ = std::fs::remove_file(&backing);
}
