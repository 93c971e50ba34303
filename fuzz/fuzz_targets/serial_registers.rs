//! Fuzzes the COM1 register interface: any sequence of reads, writes (of
//! any width, at any offset) and host input, as a guest and a user could
//! produce. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rvmm_devices::bus::BusDevice;
use rvmm_devices::serial::SerialConsole;
use vmm_sys_util::eventfd::EventFd;

fuzz_target!(|data: &[u8]| {
    let mut serial = SerialConsole::new(
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        Box::new(std::io::sink()),
    );
    for op in data.chunks(3) {
        let offset = u64::from(op[0] & 0x0f);
        match op.get(1).map(|b| b % 4) {
            Some(0) => serial.write(offset, &op[2..]),
            Some(1) => {
                let mut buf = vec![0u8; usize::from(op[0] >> 6) + 1];
                serial.read(offset, &mut buf);
            }
            Some(2) => {
                serial.queue_input(&op[2..]);
            }
            _ => serial.write(offset, &op[1..]),
        }
    }
});
