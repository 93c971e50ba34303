//! Fuzzes what a hostile guest controls around a virtio-vsock device: guest
//! memory (descriptor tables, rings, packet headers and payloads), where its
//! receive and transmit queues live and how big they say they are, and any
//! sequence of virtio-mmio register writes, interleaved with host programs
//! connecting (`CONNECT <port>`), writing to and closing their streams, and
//! a host listener taking the guest's connections. Nothing may panic, hang,
//! or touch memory outside the guest's.
//!
//! Input layout: [rx size: u16][rx desc, avail, used: u32 each]
//! [tx size: u16][tx desc, avail, used: u32 each]
//! [ops: count u8, then (offset u8, value u32) each][guest memory].
//! After each op's register write the host acts, as `value`'s low bits say.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use libfuzzer_sys::fuzz_target;
use rvmm_devices::bus::BusDevice;
use rvmm_devices::virtio::mmio::MmioTransport;
use rvmm_devices::virtio::vsock::{Vsock, RX_QUEUE, TX_QUEUE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const MEM_SIZE: usize = 1 << 20;
const HEADER: usize = 2 * 14 + 1;

fn u32_at(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().unwrap())
}

fn write_reg(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn setup_queue(t: &mut MmioTransport, index: u32, spec: &[u8]) {
    write_reg(t, 0x30, index);
    write_reg(t, 0x38, u32::from(u16::from_le_bytes([spec[0], spec[1]])));
    write_reg(t, 0x80, u32_at(spec, 2));
    write_reg(t, 0x90, u32_at(spec, 6));
    write_reg(t, 0xa0, u32_at(spec, 10));
    write_reg(t, 0x44, 1);
}

fn serve(t: &mut MmioTransport) {
    t.process_queue(TX_QUEUE);
    t.process_queue(RX_QUEUE);
}

/// A fresh directory per run, for the VM's socket and PATH_5000.
fn socket_dir() -> PathBuf {
    static RUN: AtomicU64 = AtomicU64::new(0);
    let run = RUN.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rvmm-fuzz-vsock-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let ops = data[HEADER - 1] as usize;
    let ops_end = (HEADER + ops * 5).min(data.len());
    let op_bytes = &data[HEADER..ops_end];
    let memory = &data[ops_end..];

    let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&memory[..memory.len().min(MEM_SIZE)], GuestAddress(0)).unwrap();
    let dir = socket_dir();
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    listener.set_nonblocking(true).unwrap();
    // The host program the guest's connections to port 5000 reach.
    let host_listener = UnixListener::bind(dir.join("v.sock_5000")).unwrap();
    host_listener.set_nonblocking(true).unwrap();
    let vsock = Vsock::new(3, listener, uds.clone()).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(vsock), mem, irq).unwrap();

    write_reg(&mut t, 0x70, 1);
    write_reg(&mut t, 0x70, 3);
    write_reg(&mut t, 0x24, 1);
    write_reg(&mut t, 0x20, 1);
    write_reg(&mut t, 0x70, 11);
    setup_queue(&mut t, 0, &data[0..14]);
    setup_queue(&mut t, 1, &data[14..28]);
    write_reg(&mut t, 0x70, 15);
    serve(&mut t);

    let mut streams: Vec<UnixStream> = Vec::new();
    let mut drain = [0u8; 4096];
    for op in op_bytes.chunks_exact(5) {
        let offset = u64::from(op[0]) * 4;
        let value = u32_at(op, 1);
        write_reg(&mut t, offset, value);
        let mut sink = [0u8; 4];
        t.read(offset, &mut sink);
        match value & 3 {
            // A host program connects to a guest port.
            0 if streams.len() < 16 => {
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    let _ = s.set_nonblocking(true);
                    let _ = write!(s, "CONNECT {}\n", value >> 24);
                    streams.push(s);
                }
            }
            // A host stream writes, or goes away.
            1 => {
                if let Some(s) = streams.get_mut((value >> 8) as usize % 16) {
                    let _ = s.write(&vec![0x5a; (value >> 16) as usize % 8192]);
                }
            }
            2 if !streams.is_empty() => {
                let i = (value >> 8) as usize % streams.len();
                streams.swap_remove(i);
            }
            _ => {}
        }
        while let Ok((s, _)) = host_listener.accept() {
            let _ = s.set_nonblocking(true);
            streams.push(s);
        }
        serve(&mut t);
        for s in &mut streams {
            while s.read(&mut drain).is_ok_and(|n| n > 0) {}
        }
    }
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
});
