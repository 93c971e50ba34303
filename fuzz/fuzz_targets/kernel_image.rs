//! Fuzzes kernel loading: any bytes handed to rvmm as --kernel (ELF with or
//! without PVH notes, bzImage headers, anything else), plus an initrd that
//! has to fit beside it. Loading may fail, never panic or write outside
//! guest memory.
#![no_main]

use std::io::{Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;

use libfuzzer_sys::fuzz_target;

/// A memfd reached by path, as rvmm opens kernels by path.
fn memfd_with(bytes: &[u8]) -> (std::fs::File, String) {
    // SAFETY: memfd_create with a valid NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"rvmm-fuzz-kernel".as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor that this File now owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(bytes).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    (file, format!("/proc/self/fd/{fd}"))
}

fuzz_target!(|data: &[u8]| {
    let ram = rvmm::host_memory::map_guest_ram(&rvmm::memory::ram_ranges(32 << 20)).unwrap();
    let mem = ram.memory();
    let (_keep, path) = memfd_with(data);
    if let Ok(kernel) = rvmm::boot::load_kernel(mem, std::path::Path::new(&path)) {
        let (_keep_initrd, initrd) = memfd_with(&data[..data.len().min(4096)]);
        let _ = rvmm::boot::load_initrd(mem, std::path::Path::new(&initrd), &kernel);
    }
});
