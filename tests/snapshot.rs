//! Snapshots through the API, on polled test guests: a guest that counts
//! continues from the same number after two restores of one snapshot; a
//! guest writing its disk loses no flushed write across one; a restored VM
//! maps its memory file privately and leaves it unchanged; damaged and
//! mismatched snapshots are refused, each with a message that says why.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api_client::Served;
use common::{guest, pseudo_random_bytes, require_kvm, rvmm_binary, scratch, Entry};

const LIMIT: Duration = Duration::from_secs(30);

fn rvmm_api(name: &str) -> Served {
    Served::start(Path::new(&rvmm_binary()), &[], name)
}

fn put(vm: &Served, path: &str, body: &str) -> (u16, String) {
    vm.request("PUT", path, body)
}

/// Boots `kernel` with `boot_args` and `extra` configuration requests.
fn boot(vm: &Served, kernel: &Path, boot_args: &str, extra: &[(&str, String)]) {
    let source = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "{boot_args}"}}"#,
        kernel.display()
    );
    assert_eq!(put(vm, "/boot-source", &source).0, 204);
    assert_eq!(
        put(
            vm,
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#
        )
        .0,
        204
    );
    for (path, body) in extra {
        let (status, reply) = put(vm, path, body);
        assert_eq!(status, 204, "{path}: {reply}");
    }
    assert_eq!(
        put(vm, "/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
}

/// Pauses `vm` and writes its snapshot to `name`.state and `name`.mem.
fn snapshot(vm: &Served, name: &str) -> (PathBuf, PathBuf) {
    let (state, memory) = (
        scratch(&format!("{name}.state")),
        scratch(&format!("{name}.mem")),
    );
    assert_eq!(vm.request("PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    let body = format!(
        r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        state.display(),
        memory.display()
    );
    let (status, reply) = put(vm, "/snapshot/create", &body);
    assert_eq!(status, 204, "{reply}");
    (state, memory)
}

fn load_body(state: &Path, memory: &Path, resume: bool) -> String {
    format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_path": "{}", "backend_type": "File"}}, "resume_vm": {resume}}}"#,
        state.display(),
        memory.display()
    )
}

/// The console lines that come within `window`.
fn lines_for(vm: &Served, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut lines = Vec::new();
    while let Ok(line) = vm
        .console
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        lines.push(line);
    }
    lines
}

fn chatter_numbers(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("chatter: line 0x"))
        .filter_map(|n| u64::from_str_radix(n.trim(), 16).ok())
        .collect()
}

#[test]
fn a_counting_guest_restored_twice_goes_on_from_the_same_number() {
    require_kvm();
    let kernel = guest("chatter", Entry::Linux64);
    let vm = rvmm_api("snap-count");
    boot(&vm, &kernel, "console=ttyS0", &[]);
    vm.expect("chatter: line 0x0000000000000010");
    let (state, memory) = snapshot(&vm, "count");
    // What the guest printed before the snapshot, to its last line.
    let before = chatter_numbers(&lines_for(&vm, Duration::from_millis(500)));
    let last = before.last().copied().unwrap_or(0x10);
    drop(vm);

    let mut firsts = Vec::new();
    for round in 0..2 {
        let restored = rvmm_api(&format!("snap-count-restore-{round}"));
        let (status, reply) = put(
            &restored,
            "/snapshot/load",
            &load_body(&state, &memory, true),
        );
        assert_eq!(status, 204, "{reply}");
        assert!(restored.request("GET", "/", "").1.contains("Running"));
        let after = chatter_numbers(&lines_for(&restored, Duration::from_secs(1)));
        assert!(after.len() > 10, "the restored guest barely ran: {after:?}");
        // It goes on counting from where it was: no number skipped, none again.
        for pair in after.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "{after:?}");
        }
        firsts.push(after[0]);
    }
    assert!(
        firsts[0] == last + 1 || firsts[0] == last + 2,
        "the restored guest went on from {:#x}, the snapshot's from {last:#x}",
        firsts[0]
    );
    assert_eq!(firsts[0], firsts[1], "two restores of one snapshot differ");
}

#[test]
fn a_guest_restored_paused_waits_for_resume() {
    require_kvm();
    let kernel = guest("chatter", Entry::Linux64);
    let vm = rvmm_api("snap-paused");
    boot(&vm, &kernel, "console=ttyS0", &[]);
    vm.expect("chatter: ready");
    let (state, memory) = snapshot(&vm, "paused");
    drop(vm);
    let restored = rvmm_api("snap-paused-restore");
    assert_eq!(
        put(
            &restored,
            "/snapshot/load",
            &load_body(&state, &memory, false)
        )
        .0,
        204
    );
    assert!(restored.request("GET", "/", "").1.contains("Paused"));
    assert!(lines_for(&restored, Duration::from_millis(500)).is_empty());
    assert_eq!(
        restored
            .request("PATCH", "/vm", r#"{"state": "Resumed"}"#)
            .0,
        204
    );
    assert!(!chatter_numbers(&lines_for(&restored, Duration::from_millis(300))).is_empty());
}

/// The sectors the loop guest reported flushed.
fn flushed(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("blk flushed 0x"))
        .filter_map(|n| u64::from_str_radix(n.trim(), 16).ok())
        .collect()
}

#[test]
fn a_guest_writing_its_disk_keeps_every_flushed_write_across_a_restore() {
    require_kvm();
    let kernel = guest("blk", Entry::Pvh);
    let disk = scratch("snap-disk.img");
    std::fs::write(&disk, vec![0u8; 4096 * 512]).unwrap();
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": false}}"#,
        disk.display()
    );
    let vm = rvmm_api("snap-disk");
    // rvmm puts the disk's virtio_mmio.device= on the command line itself.
    boot(
        &vm,
        &kernel,
        "console=ttyS0 blktest.loop",
        &[("/drives/data", drive)],
    );
    let deadline = Instant::now() + LIMIT;
    let mut lines = Vec::new();
    while flushed(&lines).len() < 50 {
        assert!(
            Instant::now() < deadline,
            "the guest wrote no disk: {lines:?}"
        );
        if let Ok(line) = vm.console.recv_timeout(LIMIT) {
            lines.push(line);
        }
    }
    let (state, memory) = snapshot(&vm, "disk");
    lines.extend(lines_for(&vm, Duration::from_millis(300)));
    drop(vm);
    let restored = rvmm_api("snap-disk-restore");
    let (status, reply) = put(
        &restored,
        "/snapshot/load",
        &load_body(&state, &memory, true),
    );
    assert_eq!(status, 204, "{reply}");
    let deadline = Instant::now() + LIMIT;
    let mut after = Vec::new();
    while flushed(&after).len() < 50 {
        assert!(
            Instant::now() < deadline,
            "the restored guest wrote no disk: {after:?}"
        );
        if let Ok(line) = restored.console.recv_timeout(LIMIT) {
            after.push(line);
        }
    }
    drop(restored);
    let (first, second) = (flushed(&lines), flushed(&after));
    // The restored guest goes on with the sector after the last it flushed.
    assert_eq!(
        second[0],
        first.last().unwrap() + 1,
        "{first:?} then {second:?}"
    );
    let bytes = std::fs::read(&disk).unwrap();
    for k in first.iter().chain(&second) {
        let at = *k as usize * 512;
        let expected: Vec<u8> = (0..512u64).map(|i| (k * 7 + i) as u8).collect();
        assert_eq!(
            &bytes[at..at + 512],
            &expected[..],
            "flushed sector {k} is not on the disk"
        );
    }
}

#[test]
fn a_restored_vm_maps_its_memory_file_privately() {
    require_kvm();
    let kernel = guest("chatter", Entry::Linux64);
    let vm = rvmm_api("snap-private");
    boot(&vm, &kernel, "console=ttyS0", &[]);
    vm.expect("chatter: ready");
    let (state, memory) = snapshot(&vm, "private");
    drop(vm);
    let before = std::fs::read(&memory).unwrap();
    let restored = rvmm_api("snap-private-restore");
    assert_eq!(
        put(
            &restored,
            "/snapshot/load",
            &load_body(&state, &memory, true)
        )
        .0,
        204
    );
    lines_for(&restored, Duration::from_millis(300));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", restored.child.id())).unwrap();
    let name = memory.display().to_string();
    assert!(
        maps.lines().any(|l| l.ends_with(&name)
            && l.split_whitespace()
                .nth(1)
                .is_some_and(|p| p.ends_with('p'))),
        "guest RAM is not a private mapping of {name}:\n{maps}"
    );
    drop(restored);
    // The guest wrote its memory (its counter, its stack): the file did not change.
    assert!(
        std::fs::read(&memory).unwrap() == before,
        "the restored guest wrote its memory file"
    );
}

#[test]
fn snapshots_are_taken_only_of_what_rvmm_can_restore() {
    require_kvm();
    let kernel = guest("chatter", Entry::Linux64);
    let vm = rvmm_api("snap-refusals");
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        scratch("refused.state").display(),
        scratch("refused.mem").display()
    );
    assert!(put(&vm, "/snapshot/create", &body)
        .1
        .contains("not supported before starting"));
    boot(&vm, &kernel, "console=ttyS0", &[]);
    vm.expect("chatter: ready");
    let (status, reply) = put(&vm, "/snapshot/create", &body);
    assert_eq!(status, 400);
    assert!(reply.contains("must be paused"), "{reply}");
    // A restore goes only into a VM that has not started.
    let (status, reply) = put(
        &vm,
        "/snapshot/load",
        &load_body(Path::new("/x"), Path::new("/y"), true),
    );
    assert_eq!(status, 400, "{reply}");
}

/// Rewrites the state file at `path` with its JSON body changed by `edit`,
/// under a valid header and checksum.
fn rewrite_state(path: &Path, to: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).unwrap();
    let mut body: serde_json::Value = serde_json::from_slice(&bytes[24..]).unwrap();
    edit(&mut body);
    let body = serde_json::to_vec(&body).unwrap();
    let mut out = bytes[..12].to_vec();
    out.extend(crc32fast::hash(&body).to_le_bytes());
    out.extend((body.len() as u64).to_le_bytes());
    out.extend(body);
    std::fs::write(to, out).unwrap();
}

#[test]
fn damaged_and_mismatched_snapshots_are_refused_saying_why() {
    require_kvm();
    let kernel = guest("chatter", Entry::Linux64);
    let disk = scratch("snap-refuse-disk.img");
    std::fs::write(&disk, pseudo_random_bytes(64 * 512, 3)).unwrap();
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": true}}"#,
        disk.display()
    );
    let vm = rvmm_api("snap-damaged");
    boot(&vm, &kernel, "console=ttyS0", &[("/drives/data", drive)]);
    vm.expect("chatter: ready");
    let (state, memory) = snapshot(&vm, "damaged");
    drop(vm);
    let bytes = std::fs::read(&state).unwrap();
    let variant = |name: &str, content: &[u8]| {
        let path = scratch(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let truncated = variant("truncated.state", &bytes[..bytes.len() / 2]);
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let flipped = variant("flipped.state", &flipped);
    let mut format = bytes.clone();
    format[8] = 99;
    let format = variant("format.state", &format);
    let not_a_snapshot = variant("not.state", b"{\"hello\": 1}");
    let other_version = scratch("version.state");
    rewrite_state(&state, &other_version, |b| {
        b["rvmm_version"] = "0.0.1".into()
    });
    let other_cpu = scratch("cpu.state");
    rewrite_state(&state, &other_cpu, |b| {
        b["cpu_model"]["signature"] = 1.into()
    });
    let garbage_vcpu = scratch("garbage.state");
    rewrite_state(&state, &garbage_vcpu, |b| {
        b["vcpus"] = serde_json::json!([{"regs": 5}])
    });
    let short_memory = variant("short.mem", &[0u8; 4096]);

    let refusals: Vec<(&Path, &Path, &str)> = vec![
        (&truncated, &memory, "is cut short"),
        (&flipped, &memory, "is corrupt"),
        (&format, &memory, "is a snapshot of format 99"),
        (&not_a_snapshot, &memory, "is not an rvmm snapshot"),
        (&other_version, &memory, "was taken by rvmm 0.0.1"),
        (&other_cpu, &memory, "was taken on a"),
        (&garbage_vcpu, &memory, "is corrupt"),
        (&state, &short_memory, "is 4096 bytes"),
        (Path::new("/nonexistent.state"), &memory, "cannot read it"),
    ];
    for (state_file, memory_file, expected) in refusals {
        let vm = rvmm_api("snap-refuse");
        let (status, reply) = put(
            &vm,
            "/snapshot/load",
            &load_body(state_file, memory_file, true),
        );
        assert_eq!(status, 400, "{}: {reply}", state_file.display());
        assert!(
            reply.contains(expected),
            "{}: {reply}",
            state_file.display()
        );
        // Nothing started: the same API still takes a good snapshot.
        assert!(vm.request("GET", "/", "").1.contains("Not started"));
    }
    // A disk that changed size since.
    std::fs::write(&disk, vec![0u8; 128 * 512]).unwrap();
    let vm = rvmm_api("snap-refuse-disk");
    let (status, reply) = put(&vm, "/snapshot/load", &load_body(&state, &memory, true));
    assert_eq!(status, 400);
    assert!(
        reply.contains("is 65536 bytes, not the 32768 it was"),
        "{reply}"
    );
    // And the good one loads.
    std::fs::write(&disk, pseudo_random_bytes(64 * 512, 3)).unwrap();
    let vm = rvmm_api("snap-refuse-good");
    let (status, reply) = put(&vm, "/snapshot/load", &load_body(&state, &memory, true));
    assert_eq!(status, 204, "{reply}");
}
