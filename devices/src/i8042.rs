//! Just enough of the i8042 keyboard controller for a guest to reset the
//! machine: `reboot=k` makes Linux write 0xFE (pulse reset line) to port 0x64.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Ports 0x60 (data) to 0x64 (command/status).
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;

const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// Signals `reset_evt` when the guest asks for a CPU reset.
#[derive(Debug)]
pub struct I8042 {
    reset_evt: EventFd,
}

impl I8042 {
    pub fn new(reset_evt: EventFd) -> Self {
        Self { reset_evt }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // No keyboard: the status register says "no data, input buffer empty",
        // which keeps a probing guest from waiting for one.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data == [CMD_RESET_CPU] {
            log::info!("guest requested a reset through the i8042");
            if let Err(e) = self.reset_evt.write(1) {
                log::error!("i8042: could not signal the reset: {e}");
            }
        } else {
            log::debug!("i8042: ignored write {data:x?} at offset {offset}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_the_vmm() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_writes_do_not_reset() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(evt.try_clone().unwrap());
        dev.write(COMMAND_OFFSET, &[0xd1]);
        dev.write(0, &[0xfe]);
        dev.write(COMMAND_OFFSET, &[0xfe, 0xfe]);
        assert!(evt.read().is_err(), "no reset expected");
        let mut status = [0xaa];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }
}
