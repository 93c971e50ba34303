//! Runs VMs inside the test process through the library, and checks that a
//! VM's life leaves no file descriptor or thread behind. Alone in its test
//! binary so no other test opens files meanwhile.

mod common;

use common::{guest, require_kvm, Entry};
use rvmm::{StopReason, VmConfig};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn a_vm_leaks_no_descriptors_or_threads() {
    require_kvm();
    let kernel = guest("hello", Entry::Pvh);
    let mut config = VmConfig::new(&kernel);
    config.mem_mib = 64;
    config.cpus = 2;
    // The filter would stay on this test thread after the VM ends.
    config.seccomp = false;
    // One run first: it installs the process-wide signal handlers once.
    assert_eq!(rvmm::run(&config).unwrap(), StopReason::Reset);
    let (fds, tasks) = (open_fds(), threads());
    for _ in 0..5 {
        assert_eq!(rvmm::run(&config).unwrap(), StopReason::Reset);
    }
    assert_eq!(open_fds(), fds, "file descriptors leaked across VM runs");
    assert_eq!(threads(), tasks, "threads leaked across VM runs");
}
