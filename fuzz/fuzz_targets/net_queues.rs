//! Fuzzes what a hostile guest controls around a virtio-net device: guest
//! memory (descriptor tables, rings, frames), where both queues live and
//! how big they say they are, and any sequence of virtio-mmio register
//! writes, interleaved with frames arriving from the tap and with serving
//! both queues. Nothing may panic, hang, or touch memory outside the guest's.
//!
//! Input layout: [rx size: u16][rx desc, avail, used: u32 each]
//! [tx size: u16][tx desc, avail, used: u32 each]
//! [ops: count u8, then (offset u8, value u32) each][guest memory].
//! Each op also sends the tap a frame of (value % 2048) bytes.
#![no_main]

use std::os::unix::net::UnixDatagram;

use libfuzzer_sys::fuzz_target;
use rvmm_devices::bus::BusDevice;
use rvmm_devices::virtio::mmio::MmioTransport;
use rvmm_devices::virtio::net::{Net, RX_QUEUE, TX_QUEUE};
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
    t.process_queue(RX_QUEUE);
    t.process_queue(TX_QUEUE);
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
    let (device_end, host) = UnixDatagram::pair().unwrap();
    device_end.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let tap = std::fs::File::from(std::os::fd::OwnedFd::from(device_end));
    // With offloads, so that the guest may negotiate them and the tap's
    // headers are checked against what it took.
    let net = Net::new(tap, [6, 0, 0, 0, 0, 1], Some(Box::new(|_| Ok(()))));
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(net), mem, irq).unwrap();

    // A well-behaved setup with guest-chosen queue sizes and addresses...
    write_reg(&mut t, 0x70, 1);
    write_reg(&mut t, 0x70, 3);
    write_reg(&mut t, 0x24, 1);
    write_reg(&mut t, 0x20, 1);
    write_reg(&mut t, 0x70, 11);
    setup_queue(&mut t, 0, &data[0..14]);
    setup_queue(&mut t, 1, &data[14..28]);
    write_reg(&mut t, 0x70, 15);
    serve(&mut t);
    // ...then whatever register writes the guest likes, frames from the
    // host, and the device running after each.
    let mut drain = [0u8; 70000];
    for op in op_bytes.chunks_exact(5) {
        let offset = u64::from(op[0]) * 4;
        let value = u32_at(op, 1);
        write_reg(&mut t, offset, value);
        let mut sink = [0u8; 4];
        t.read(offset, &mut sink);
        // A header of guest-chosen flags and GSO type, then the frame.
        let mut frame = vec![0x5a; (value % 2048) as usize];
        if let Some(header) = frame.get_mut(..2) {
            header.copy_from_slice(&[op[1] & 1, op[2]]);
        }
        let _ = host.send(&frame);
        serve(&mut t);
        while host.recv(&mut drain).is_ok() {}
    }
});
