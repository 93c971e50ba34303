//! Fuzzes what a hostile guest controls around a virtio-blk device: the
//! contents of guest memory (descriptor table, rings, request headers,
//! buffers), where the queue lives and how big it says it is, and any
//! sequence of virtio-mmio register writes, interleaved with queue
//! processing. Nothing may panic, hang, or touch memory outside the guest's.
//!
//! Input layout: [queue size: u16][desc: u32][avail: u32][used: u32]
//! [register ops: count u8, then (offset u8, value u32) each][guest memory].
#![no_main]

use std::io::Write;
use std::os::fd::FromRawFd;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rvmm_devices::bus::BusDevice;
use rvmm_devices::virtio::block::Block;
use rvmm_devices::virtio::mmio::MmioTransport;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 1 << 20;
const DISK_SECTORS: usize = 128;

/// A 64 KiB in-memory disk, opened through /proc/self/fd like a path.
fn disk_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        // SAFETY: memfd_create with a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"rvmm-fuzz-disk".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor owned here; it stays open (leaked
        // on purpose) for the whole fuzzing run.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.write_all(&vec![0xa5; DISK_SECTORS * 512]).unwrap();
        std::mem::forget(file);
        format!("/proc/self/fd/{fd}")
    })
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().unwrap())
}

fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 15 {
        return;
    }
    let size = u16::from_le_bytes([data[0], data[1]]);
    let (desc, avail, used) = (u32_at(data, 2), u32_at(data, 6), u32_at(data, 10));
    let ops = data[14] as usize;
    let ops_end = (15 + ops * 5).min(data.len());
    let op_bytes = &data[15..ops_end];
    let memory = &data[ops_end..];

    let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&memory[..memory.len().min(MEM_SIZE)], GuestAddress(0)).unwrap();
    let block = Block::open(std::path::Path::new(disk_path()), false, "fuzz").unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(block), mem, irq).unwrap();

    // A well-behaved setup with guest-chosen queue size and addresses...
    write_reg(&mut t, 0x70, 1);
    write_reg(&mut t, 0x70, 3);
    write_reg(&mut t, 0x24, 1);
    write_reg(&mut t, 0x20, 1);
    write_reg(&mut t, 0x70, 11);
    write_reg(&mut t, 0x38, u32::from(size));
    write_reg(&mut t, 0x80, desc);
    write_reg(&mut t, 0x90, avail);
    write_reg(&mut t, 0xa0, used);
    write_reg(&mut t, 0x44, 1);
    write_reg(&mut t, 0x70, 15);
    t.process_queue(0);
    // ...then whatever register writes the guest likes, with the device
    // running after each.
    for op in op_bytes.chunks_exact(5) {
        let offset = u64::from(op[0]) * 4;
        write_reg(&mut t, offset, u32_at(op, 1));
        let mut sink = [0u8; 4];
        t.read(offset, &mut sink);
        t.process_queue(0);
    }
});
