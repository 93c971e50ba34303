//! Firecracker's API and configuration file on rvmm. The conformance check
//! sends the same requests to the real Firecracker (`../shared/peers/`)
//! and to rvmm and wants the same status codes and the same shape of body;
//! the others check that what the API says happens in the guest.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api_client::Served;
use common::{guest, require_kvm, rvmm_binary, scratch, Entry};

const LIMIT: Duration = Duration::from_secs(30);

/// The Firecracker release binary the project keeps beside its checkout.
fn firecracker() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/firecracker");
    assert!(
        path.is_file(),
        "{} is missing: the conformance check runs the real Firecracker; put its release binary there (see ../shared/peers/README.md)",
        path.display()
    );
    path
}

/// What a body's shape is: its top-level keys, or "text" for a non-object.
fn shape(body: &str) -> Vec<String> {
    if body.is_empty() {
        return Vec::new();
    }
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => {
            let mut keys: Vec<String> = map.keys().cloned().collect();
            keys.sort();
            keys
        }
        _ => vec!["text".into()],
    }
}

/// The steps of the conformance check: (method, path, body).
fn conformance_steps(kernel: &Path, missing: &Path) -> Vec<(&'static str, &'static str, String)> {
    let kernel = kernel.display();
    let missing = missing.display();
    let snapshot = format!(
        r#"{{"snapshot_type": "Full", "snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        scratch("conformance.state").display(),
        scratch("conformance.mem").display()
    );
    let load = format!(
        r#"{{"snapshot_path": "{}", "mem_backend": {{"backend_path": "{}", "backend_type": "File"}}}}"#,
        scratch("conformance.state").display(),
        scratch("conformance.mem").display()
    );
    vec![
        ("GET", "/", String::new()),
        ("GET", "/version", String::new()),
        ("GET", "/machine-config", String::new()),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#.into(),
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 0, "mem_size_mib": 128}"#.into(),
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"mem_size_mib": 256}"#.into(),
        ),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path": "{missing}"}}"#),
        ),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path": "{kernel}", "bogus": 1}}"#),
        ),
        ("PUT", "/boot-source", "not json".into()),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.into(),
        ),
        ("PUT", "/actions", r#"{"action_type": "Reboot"}"#.into()),
        ("GET", "/no-such-endpoint", String::new()),
        (
            "PUT",
            "/drives/rootfs",
            format!(
                r#"{{"drive_id": "rootfs", "path_on_host": "{missing}", "is_root_device": true, "is_read_only": false}}"#
            ),
        ),
        (
            "PUT",
            "/drives/b",
            format!(r#"{{"drive_id": "a", "path_on_host": "{missing}", "is_root_device": false}}"#),
        ),
        ("PATCH", "/vm", r#"{"state": "Paused"}"#.into()),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "SendCtrlAltDel"}"#.into(),
        ),
        ("GET", "/vm/config", String::new()),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0"}}"#),
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.into(),
        ),
        ("GET", "/", String::new()),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.into(),
        ),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path": "{kernel}"}}"#),
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 2, "mem_size_mib": 128}"#.into(),
        ),
        ("PUT", "/snapshot/create", snapshot.clone()),
        ("PATCH", "/vm", r#"{"state": "Paused"}"#.into()),
        ("GET", "/", String::new()),
        ("PUT", "/snapshot/create", snapshot),
        ("PUT", "/snapshot/load", load),
        ("PATCH", "/vm", r#"{"state": "Resumed"}"#.into()),
        ("PATCH", "/vm", r#"{"state": "Sleeping"}"#.into()),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "SendCtrlAltDel"}"#.into(),
        ),
        ("GET", "/machine-config", String::new()),
        ("GET", "/vm/config", String::new()),
    ]
}

type Answers = Vec<(u16, Vec<String>, Option<String>)>;

/// (status, shape, state from GET /) for every step on `binary`, or why the
/// guest it started never spoke.
fn run_steps(binary: &Path, name: &str) -> Result<Answers, String> {
    let kernel = guest("halt", Entry::Pvh);
    let missing = scratch("no-such-file");
    let vm = Served::start(binary, &[], name);
    let mut answers = Vec::new();
    for (method, path, body) in conformance_steps(&kernel, &missing) {
        let (status, reply) = vm.request(method, path, &body);
        if method == "PUT" && path == "/actions" && body.contains("InstanceStart") && status == 204
        {
            vm.wait_for("ready").map_err(|e| {
                let stderr =
                    std::fs::read_to_string(scratch(&format!("{name}.stderr"))).unwrap_or_default();
                format!("{name}: after InstanceStart, {e}; its stderr:\n{stderr}")
            })?;
        }
        let state = serde_json::from_str::<serde_json::Value>(&reply)
            .ok()
            .and_then(|v| v.get("state").and_then(|s| s.as_str()).map(String::from));
        eprintln!("{name}: {method} {path} -> {status} {reply}");
        answers.push((status, shape(&reply), state));
    }
    Ok(answers)
}

/// Firecracker's answers. It now and then loses its guest's output (see
/// ../shared/peers/README.md); such a run is repeated, up to three in all,
/// so that the check measures rvmm, not Firecracker's flakes.
fn firecrackers_answers() -> Answers {
    let mut failures = Vec::new();
    for attempt in 1..=3 {
        match run_steps(
            &firecracker(),
            &format!("conformance-firecracker-{attempt}"),
        ) {
            Ok(answers) => return answers,
            Err(e) => failures.push(e),
        }
    }
    panic!(
        "Firecracker's guest never spoke in three runs:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_api_answers_as_firecrackers_does() {
    require_kvm();
    let fc = firecrackers_answers();
    let ours =
        run_steps(Path::new(&rvmm_binary()), "conformance-rvmm").unwrap_or_else(|e| panic!("{e}"));
    let kernel = guest("halt", Entry::Pvh);
    let steps = conformance_steps(&kernel, &scratch("no-such-file"));
    let mut differences = Vec::new();
    for ((step, theirs), mine) in steps.iter().zip(&fc).zip(&ours) {
        if theirs != mine {
            differences.push(format!(
                "{} {} {}\n  Firecracker: {theirs:?}\n  rvmm:        {mine:?}",
                step.0, step.1, step.2
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "rvmm's API differs from Firecracker's:\n{}",
        differences.join("\n")
    );
    // The sequence means something only if the VM ran and paused.
    let states: Vec<&str> = ours.iter().filter_map(|s| s.2.as_deref()).collect();
    assert_eq!(states, ["Not started", "Running", "Paused"], "{ours:?}");
}

/// The last line number a chatter guest printed within `wait`.
fn last_line_within(vm: &Served, wait: Duration) -> Option<u64> {
    let deadline = Instant::now() + wait;
    let mut last = None;
    while let Ok(line) = vm
        .console
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if let Some(n) = line.strip_prefix("chatter: line 0x") {
            last = u64::from_str_radix(n.trim(), 16).ok();
        }
    }
    last
}

#[test]
fn pause_stops_the_guest_and_resume_lets_it_go_on() {
    require_kvm();
    let kernel = guest("chatter", Entry::Linux64);
    let vm = Served::start(Path::new(&rvmm_binary()), &[], "pause");
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(vm.request("PUT", "/boot-source", &boot).0, 204);
    assert_eq!(
        vm.request("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#)
            .0,
        204
    );
    vm.expect("chatter: ready");
    assert!(last_line_within(&vm, Duration::from_millis(300)).is_some());
    assert_eq!(vm.request("PATCH", "/vm", r#"{"state": "Paused"}"#).0, 204);
    // What was printed before the pause drains; then nothing comes.
    let before = last_line_within(&vm, Duration::from_millis(500));
    let during = last_line_within(&vm, Duration::from_millis(700));
    assert_eq!(
        during, None,
        "the guest printed while paused (up to {before:?})"
    );
    assert_eq!(vm.request("PATCH", "/vm", r#"{"state": "Resumed"}"#).0, 204);
    let after =
        last_line_within(&vm, Duration::from_millis(500)).expect("no output after resuming");
    assert!(after > before.unwrap_or(0), "{after} after {before:?}");
}

#[test]
fn a_config_file_boots_the_vm_with_or_without_the_api() {
    require_kvm();
    let kernel = guest("inspect", Entry::Linux64);
    let disk = scratch("config-file-disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let config = scratch("vm-config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{
  "boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0 inspect.cmdline"}},
  "drives": [{{"drive_id": "data", "path_on_host": "{}", "is_root_device": true, "is_read_only": true}}],
  "machine-config": {{"vcpu_count": 2, "mem_size_mib": 64}},
  "balloon": null
}}"#,
            kernel.display(),
            disk.display()
        ),
    )
    .unwrap();
    // Without an API: Firecracker's --no-api, as its users write it.
    let run = common::rvmm(
        &["--no-api", "--config-file", config.to_str().unwrap()],
        LIMIT,
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    assert!(
        run.stdout.contains("inspect.cmdline root=/dev/vda ro"),
        "the root drive's root= is on the guest's command line:\n{}",
        run.stdout
    );
    // With one: the VM starts at once and the API serves it.
    let vm = Served::start(
        Path::new(&rvmm_binary()),
        &["--config-file", config.to_str().unwrap()],
        "config-file-api",
    );
    let (status, body) = vm.request("GET", "/vm/config", "");
    assert_eq!(status, 200);
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value["machine-config"]["vcpu_count"], 2);
    assert_eq!(value["drives"][0]["drive_id"], "data");

    // What rvmm lacks is refused by name, in one line.
    let bad = scratch("vm-config-balloon.json");
    std::fs::write(
        &bad,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "balloon": {{"amount_mib": 1, "deflate_on_oom": false}}}}"#,
            kernel.display()
        ),
    )
    .unwrap();
    for (file, expected) in [
        (bad.as_path(), "rvmm does not have a balloon device"),
        (Path::new("/nonexistent.json"), "cannot read --config-file"),
        (kernel.as_path(), "is not a Firecracker configuration"),
    ] {
        let run = common::rvmm(&["--config-file", file.to_str().unwrap()], LIMIT);
        assert_eq!(run.code(), Some(1), "{}", run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", run.stderr);
        assert!(lines[0].contains(expected), "{}", lines[0]);
    }
}

#[test]
fn a_failed_start_leaves_the_vm_to_be_configured_again() {
    require_kvm();
    let vm = Served::start(Path::new(&rvmm_binary()), &[], "failed-start");
    // A file that opens but is no kernel: refused at InstanceStart.
    let junk = scratch("not-a-kernel");
    std::fs::write(&junk, b"this is no kernel").unwrap();
    let put = |path: &Path| format!(r#"{{"kernel_image_path": "{}"}}"#, path.display());
    assert_eq!(vm.request("PUT", "/boot-source", &put(&junk)).0, 204);
    let (status, body) = vm.request("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Start microvm error"), "{body}");
    assert!(vm.request("GET", "/", "").1.contains("Not started"));
    let kernel = guest("halt", Entry::Pvh);
    assert_eq!(vm.request("PUT", "/boot-source", &put(&kernel)).0, 204);
    assert_eq!(
        vm.request("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#)
            .0,
        204
    );
    vm.expect("ready");
    assert!(vm.request("GET", "/", "").1.contains("Running"));
}

#[test]
fn logger_metrics_and_every_thread_under_seccomp() {
    require_kvm();
    let vm = Served::start(Path::new(&rvmm_binary()), &[], "logger");
    let log = scratch("api-logger.log");
    let metrics = scratch("api-metrics.json");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&metrics);
    let logger = format!(r#"{{"log_path": "{}", "level": "Info"}}"#, log.display());
    assert_eq!(vm.request("PUT", "/logger", &logger).0, 204);
    let put = format!(r#"{{"metrics_path": "{}"}}"#, metrics.display());
    assert_eq!(vm.request("PUT", "/metrics", &put).0, 204);
    let kernel = guest("halt", Entry::Pvh);
    let boot = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(vm.request("PUT", "/boot-source", &boot).0, 204);
    assert_eq!(
        vm.request("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#)
            .0,
        204
    );
    vm.expect("ready");
    assert_eq!(
        vm.request("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#)
            .0,
        204
    );
    let line = std::fs::read_to_string(&metrics).unwrap();
    let value: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert!(
        value["api_server"]["requests"].as_u64().unwrap() >= 4,
        "{line}"
    );
    // The level took: rvmm's info lines (the VM's disks, its command line) go to the file.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("kernel command line:"), "{text}");
    let modes = common::thread_modes(vm.child.id());
    assert!(
        modes.iter().any(|(name, _)| name == "rvmm-api"),
        "{modes:?}"
    );
    for (name, mode) in &modes {
        assert_eq!(mode, "2", "thread {name} runs without a seccomp filter");
    }
}
