//! Boots the purpose-built test guests (tests/guests/) with the rvmm binary
//! and checks what they print: entry modes, boot data, console input, exits.

mod common;

use std::time::Duration;

use common::{fnv1a64, guest, require_kvm, rvmm, rvmm_with_input, scratch, Console, Entry};

const LIMIT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;
/// Where rvmm's 32-bit MMIO hole starts (guest RAM resumes at 4 GiB).
const MMIO_HOLE_START: u64 = 0xd000_0000;
const FOUR_GIB: u64 = 1 << 32;

fn assert_clean_exit(run: &common::Run, what: &str) {
    assert_eq!(
        run.code(),
        Some(0),
        "{what}: rvmm should exit 0 after the guest resets\nstdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        !run.stderr.contains("panicked"),
        "{what}: rvmm panicked:\n{}",
        run.stderr
    );
    // A guest that runs and resets is nothing to warn about; on a PVM host
    // rvmm says once what it added to the command line.
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("PVM-backed"))
        .collect();
    assert!(
        warnings.is_empty(),
        "{what}: rvmm warned about a clean run:\n{}",
        warnings.join("\n")
    );
}

#[test]
fn pvh_guest_prints_and_resets() {
    require_kvm();
    let kernel = guest("hello", Entry::Pvh);
    let run = rvmm(&["--kernel", kernel.to_str().unwrap()], LIMIT);
    assert_clean_exit(&run, "PVH hello");
    assert_eq!(run.stdout, "Hello from the rvmm PVH test guest\n");
}

#[test]
fn long_mode_guest_prints_and_resets() {
    require_kvm();
    let kernel = guest("hello", Entry::Linux64);
    let run = rvmm(&["--kernel", kernel.to_str().unwrap()], LIMIT);
    assert_clean_exit(&run, "64-bit hello");
    assert_eq!(run.stdout, "Hello from the rvmm 64-bit test guest\n");
}

/// What the inspect guest reported.
#[derive(Debug, Default)]
struct Inspection {
    entry: String,
    e820: Vec<(u64, u64, String)>,
    total: u64,
    cmdline: String,
    initrd: Option<(u64, u64, u64)>,
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("not hex: {s}"))
}

fn parse_inspection(stdout: &str) -> Inspection {
    let mut r = Inspection::default();
    let mut done = false;
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("inspect: ") else {
            continue;
        };
        let words: Vec<&str> = rest.split(' ').collect();
        match words[0] {
            "entry" => r.entry = words[1].to_string(),
            "e820" => r
                .e820
                .push((hex(words[1]), hex(words[2]), words[3].to_string())),
            "memory" => r.total = hex(words[2]),
            "cmdline" => r.cmdline = rest["cmdline ".len()..].to_string(),
            "initrd" if words[1] != "none" => {
                r.initrd = Some((hex(words[1]), hex(words[2]), hex(words[4])))
            }
            "done" => done = true,
            _ => {}
        }
    }
    assert!(done, "inspect guest did not finish:\n{stdout}");
    r
}

/// The command line the guest must see for `given`: on PVM hosts rvmm adds
/// its documented flags (and logs them).
fn expected_cmdline(given: &str, stderr: &str) -> String {
    if common::is_pvm_host() {
        assert!(
            stderr.contains("PVM-backed"),
            "rvmm must say it added flags on a PVM host:\n{stderr}"
        );
        // The flags the project docs name for PVM hosts.
        format!("{given} noxsave clearcpuid=popcnt,smap,smep,fsgsbase,pcid,invpcid,umip,rdpid,rdrand,rdseed,erms,fsrm,tsc_deadline_timer")
    } else {
        assert!(!stderr.contains("PVM-backed"));
        given.to_string()
    }
}

fn initrd_bytes(len: usize) -> Vec<u8> {
    // Deterministic, incompressible-looking bytes (xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn check_inspection(entry: Entry, mem_mib: u64, initrd_len: usize) {
    let kernel = guest("inspect", entry);
    let initrd = scratch(&format!("initrd-{initrd_len}"));
    let bytes = initrd_bytes(initrd_len);
    std::fs::write(&initrd, &bytes).unwrap();
    let cmdline = "rvmm-test=1 console=ttyS0 a.b=c,d";
    let mem = mem_mib.to_string();
    let run = rvmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--mem",
            &mem,
            "--cmdline",
            cmdline,
        ],
        LIMIT,
    );
    let what = format!("inspect {entry:?} --mem {mem_mib}");
    assert_clean_exit(&run, &what);
    let seen = parse_inspection(&run.stdout);
    let mem_bytes = mem_mib * MIB;

    assert_eq!(
        seen.entry,
        if entry == Entry::Pvh {
            "pvh"
        } else {
            "linux64"
        },
        "{what}"
    );
    assert_eq!(
        seen.total, mem_bytes,
        "{what}: memory map must cover exactly --mem"
    );
    let mut end = 0;
    for (addr, size, _) in &seen.e820 {
        assert!(
            *addr >= end,
            "{what}: e820 entries overlap or are unsorted: {:?}",
            seen.e820
        );
        end = addr + size;
        assert!(
            end <= MMIO_HOLE_START || *addr >= FOUR_GIB,
            "{what}: RAM inside the MMIO hole"
        );
    }
    let low = mem_bytes.min(MMIO_HOLE_START);
    let high = mem_bytes - low;
    let last = seen.e820.last().unwrap();
    if high > 0 {
        assert_eq!(
            (last.0, last.1),
            (FOUR_GIB, high),
            "{what}: memory above 4 GiB"
        );
    } else {
        assert_eq!(last.0 + last.1, mem_bytes, "{what}: top of RAM");
    }

    assert_eq!(
        seen.cmdline,
        expected_cmdline(cmdline, &run.stderr),
        "{what}"
    );

    let (addr, size, hash) = seen
        .initrd
        .unwrap_or_else(|| panic!("{what}: no initrd reported"));
    assert_eq!(size, initrd_len as u64, "{what}: initrd size");
    assert_eq!(
        hash,
        fnv1a64(&bytes),
        "{what}: initrd bytes differ from the file"
    );
    assert_eq!(addr % 4096, 0, "{what}: initrd must be page aligned");
    assert!(
        addr >= MIB && addr + size <= low,
        "{what}: initrd at {addr:#x} is outside low RAM"
    );
}

#[test]
fn pvh_guest_sees_memory_cmdline_and_initrd() {
    require_kvm();
    check_inspection(Entry::Pvh, 128, 100_000);
}

#[test]
fn long_mode_guest_sees_memory_cmdline_and_initrd() {
    require_kvm();
    check_inspection(Entry::Linux64, 128, 100_000);
}

#[test]
fn cmdline_append_goes_after_the_default_line() {
    require_kvm();
    let kernel = guest("inspect", Entry::Pvh);
    let run = rvmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline-append",
            "root=/dev/vda rw",
        ],
        LIMIT,
    );
    assert_clean_exit(&run, "--cmdline-append");
    let seen = parse_inspection(&run.stdout);
    // The default the README documents, then the appended arguments.
    let expected = "console=ttyS0 reboot=k panic=1 pci=off nomodule i8042.noaux i8042.nomux i8042.dumbkbd root=/dev/vda rw";
    assert_eq!(seen.cmdline, expected_cmdline(expected, &run.stderr));
}

/// rvmm does not parse an initrd: one cut short, or of any odd size, is
/// handed over byte for byte (the guest kernel judges its contents).
#[test]
fn odd_sized_initrds_reach_the_guest_byte_exact() {
    require_kvm();
    for len in [1, 511, 4097, (3 << 20) + 1] {
        check_inspection(Entry::Linux64, 64, len);
    }
}

#[test]
fn memory_map_is_exact_around_the_mmio_hole() {
    require_kvm();
    let hole_mib = MMIO_HOLE_START / MIB;
    for mem_mib in [16, 64, hole_mib - 1, hole_mib, hole_mib + 1, 16 * 1024] {
        check_inspection(Entry::Linux64, mem_mib, 4096);
    }
    check_inspection(Entry::Pvh, hole_mib + 1, 4096);
}

#[test]
fn console_input_reaches_the_guest_through_a_pipe() {
    require_kvm();
    let kernel = guest("echo", Entry::Linux64);
    let run = rvmm_with_input(
        &["--kernel", kernel.to_str().unwrap()],
        b"typed through stdin\n\x04",
        LIMIT,
    );
    assert_clean_exit(&run, "echo");
    assert_eq!(run.stdout, "echo: ready\ntyped through stdin\necho: bye\n");
}

#[test]
fn long_console_input_waits_for_the_guest() {
    require_kvm();
    // Far more than the UART's 64-byte FIFO: rvmm must hold the rest back
    // and deliver every byte in order.
    let text: String = (0..200)
        .map(|i| format!("line {i:03} of console input\n"))
        .collect();
    let mut input = text.clone().into_bytes();
    input.push(4);
    let kernel = guest("echo", Entry::Linux64);
    let run = rvmm_with_input(&["--kernel", kernel.to_str().unwrap()], &input, LIMIT);
    assert_clean_exit(&run, "echo, long input");
    assert_eq!(run.stdout, format!("echo: ready\n{text}echo: bye\n"));
}

#[test]
fn unknown_ports_and_mmio_read_as_all_ones() {
    require_kvm();
    let kernel = guest("probe", Entry::Linux64);
    let run = rvmm(&["--kernel", kernel.to_str().unwrap()], LIMIT);
    assert_clean_exit(&run, "probe");
    assert!(
        run.stdout.contains("port 0x1234 reads 0x00000000000000ff"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("mmio 0xd0000800 reads 0x00000000ffffffff"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("probe: alive"));
}

#[test]
fn a_triple_fault_is_a_reset() {
    require_kvm();
    let kernel = guest("fault", Entry::Linux64);
    let run = rvmm(&["--kernel", kernel.to_str().unwrap()], LIMIT);
    assert_clean_exit(&run, "triple fault");
    assert_eq!(run.stdout, "fault: raising an exception without an IDT\n");
}

#[test]
fn an_emulation_failure_ends_rvmm_with_the_reason() {
    require_kvm();
    let kernel = guest("int3", Entry::Linux64);
    let run = rvmm(&["--kernel", kernel.to_str().unwrap()], LIMIT);
    assert_eq!(run.stdout, "int3: raising a breakpoint without an IDT\n");
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    if common::is_pvm_host() {
        // The host cannot emulate int3 in guest kernel mode: rvmm must stop
        // with a clear reason and the guest's RIP, not hang.
        assert_eq!(run.code(), Some(1), "{}", run.stderr);
        let last = run.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("rvmm: error: vCPU 0 stopped: KVM internal error (emulation failure")
                && last.contains("guest RIP 0x"),
            "unexpected error line: {last}"
        );
        eprintln!("PVM host: int3 gave an emulation failure, as expected");
    } else {
        // Hardware virtualization: int3 without an IDT is a triple fault.
        assert_clean_exit(&run, "int3");
        eprintln!("hardware KVM host: int3 triple-faulted, as expected");
    }
}

#[test]
fn mp_table_lists_every_vcpu() {
    require_kvm();
    let kernel = guest("mptable", Entry::Linux64);
    for cpus in [1u64, 4, 16] {
        let n = cpus.to_string();
        let run = rvmm(&["--kernel", kernel.to_str().unwrap(), "--cpus", &n], LIMIT);
        assert_clean_exit(&run, "mptable");
        assert!(run.stdout.contains("table ok"), "{}", run.stdout);
        let expected = format!(
            "mptable: cpus {:#018x} bsp 0x0000000000000000 ioapic 0x00000000fec00000 irqs 0x0000000000000018",
            cpus
        );
        assert!(
            run.stdout.contains(&expected),
            "--cpus {cpus}: expected {expected:?} in\n{}",
            run.stdout
        );
        if cpus > 1 && common::is_pvm_host() {
            assert!(
                run.stderr.contains("secondary vCPUs cannot start"),
                "{}",
                run.stderr
            );
        }
    }
}

/// AnonHugePages of process `pid`, in KiB.
fn anon_huge_kib(pid: u32) -> u64 {
    common::proc_kib(&format!("/proc/{pid}/smaps_rollup"), "AnonHugePages").unwrap()
}

#[test]
fn huge_pages_back_guest_memory_on_request() {
    require_kvm();
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .expect("this test needs transparent huge pages in the host kernel");
    assert!(
        !thp.contains("[never]"),
        "transparent huge pages are off on this host; echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"
    );
    let kernel = guest("touch", Entry::Linux64);
    let k = kernel.to_str().unwrap();
    let args = [
        "--kernel",
        k,
        "--mem",
        "256",
        "--cmdline",
        "console=ttyS0 touch.wait",
    ];
    let mut with = Console::start(&[&args[..], &["--hugepages"]].concat(), "hugepages");
    with.expect("touch: done", LIMIT);
    let huge = anon_huge_kib(with.child.id());
    with.send("x");
    assert_eq!(with.wait_exit(LIMIT).code(), Some(0), "{}", with.stderr());
    // The guest wrote 192 MiB; most of it must sit in 2 MiB pages.
    assert!(
        huge >= 128 << 10,
        "--hugepages: only {huge} KiB in huge pages"
    );
    if thp.contains("[madvise]") {
        let mut without = Console::start(&args, "no-hugepages");
        without.expect("touch: done", LIMIT);
        let huge = anon_huge_kib(without.child.id());
        without.send("x");
        assert_eq!(without.wait_exit(LIMIT).code(), Some(0));
        assert_eq!(huge, 0, "without --hugepages this host gives no huge pages");
        eprintln!("THP mode madvise: huge pages with --hugepages ({huge} KiB), none without");
    } else {
        // THP "always" gives every process huge pages: rvmm's choice cannot
        // be seen without the flag, so only half of this test applies.
        eprintln!(
            "THP mode {:?}: checked --hugepages only; without it the host decides",
            thp.trim()
        );
    }
}

#[test]
fn what_rvmm_loads_sits_in_huge_pages_and_what_the_guest_touches_does_not() {
    require_kvm();
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .expect("this test needs transparent huge pages in the host kernel");
    assert!(
        thp.contains("[madvise]"),
        "this test needs THP mode madvise (here: {}); echo madvise > /sys/kernel/mm/transparent_hugepage/enabled",
        thp.trim()
    );
    // A 16 MiB initrd, placed at the top of the guest's 256 MiB, above the
    // 192 MiB the guest writes page by page.
    let initrd = common::scratch("huge-initrd.img");
    std::fs::write(&initrd, common::pseudo_random_bytes(16 << 20, 3)).unwrap();
    let kernel = guest("touch", Entry::Linux64);
    let mut vm = Console::start(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--mem",
            "256",
            "--cmdline",
            "console=ttyS0 touch.wait",
        ],
        "huge-initrd",
    );
    vm.expect("touch: done", LIMIT);
    let huge = anon_huge_kib(vm.child.id());
    vm.send("x");
    assert_eq!(vm.wait_exit(LIMIT).code(), Some(0), "{}", vm.stderr());
    // The initrd's whole 2 MiB pages (7 or 8 of them): one nested page
    // fault each for the guest instead of 512. The guest's own 192 MiB:
    // small pages.
    assert!(
        (14 << 10..=16 << 10).contains(&huge),
        "{huge} KiB in huge pages; the initrd's 16 MiB should be, and nothing else"
    );
}

#[test]
fn boot_timer_reports_when_enabled() {
    require_kvm();
    let kernel = guest("timer", Entry::Linux64);
    let k = kernel.to_str().unwrap();
    let on = common::rvmm_env(
        &["--kernel", k, "--boot-timer"],
        &[("RUST_LOG", "info")],
        LIMIT,
    );
    assert_clean_exit(&on, "boot timer on");
    let report = on
        .stderr
        .lines()
        .find(|l| l.contains("boot timer: guest booted"))
        .unwrap_or_else(|| {
            panic!("no boot timer report:\n{}", on.stderr);
        });
    assert!(
        report.contains("ms after rvmm started") && report.contains("ms CPU"),
        "{report}"
    );
    assert!(
        on.stdout.contains("timer: 1000 more reports"),
        "{}",
        on.stdout
    );
    let reports = on.stderr.matches("boot timer:").count();
    assert_eq!(reports, 1, "a guest must not flood the log:\n{}", on.stderr);
    let off = common::rvmm_env(&["--kernel", k], &[("RUST_LOG", "info")], LIMIT);
    assert_clean_exit(&off, "boot timer off");
    assert!(!off.stderr.contains("boot timer"), "{}", off.stderr);
}
