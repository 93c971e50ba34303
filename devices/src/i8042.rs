//! Enough of the i8042 keyboard controller for Linux to probe it without
//! errors and to reset the machine: `reboot=k` makes Linux write 0xFE (pulse
//! the reset line) to port 0x64. There is no keyboard behind it.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Ports 0x60 (data) to 0x64 (command/status).
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
/// The keyboard's IRQ on a PC, which firmware tables name; this model never
/// raises it (there is no keyboard behind it).
pub const I8042_KBD_IRQ: u32 = 1;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
const KBD_TEST_OK: u8 = 0x00;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;

/// Controller configuration at power-on: keyboard interrupt on, system flag
/// set, translation on.
const DEFAULT_CTR: u8 = 0x45;

/// The controller: a configuration byte, one output byte, and the reset line.
#[derive(Debug)]
pub struct I8042 {
    reset_evt: EventFd,
    ctr: u8,
    output: Option<u8>,
    last_was_command: bool,
    expecting_ctr: bool,
}

impl I8042 {
    /// `reset_evt` is signalled when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        Self {
            reset_evt,
            ctr: DEFAULT_CTR,
            output: None,
            last_was_command: false,
            expecting_ctr: false,
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM_FLAG;
        if self.output.is_some() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_LAST_WAS_COMMAND;
        }
        status
    }

    fn command(&mut self, command: u8) {
        self.last_was_command = true;
        self.expecting_ctr = false;
        match command {
            CMD_READ_CTR => self.output = Some(self.ctr),
            CMD_WRITE_CTR => self.expecting_ctr = true,
            CMD_SELF_TEST => self.output = Some(SELF_TEST_OK),
            CMD_KBD_TEST => self.output = Some(KBD_TEST_OK),
            CMD_RESET_CPU => {
                log::info!("guest requested a reset through the i8042");
                if let Err(e) = self.reset_evt.write(1) {
                    log::error!("i8042: could not signal the reset: {e}");
                }
            }
            other => log::debug!("i8042: ignored command {other:#x}"),
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        if std::mem::take(&mut self.expecting_ctr) {
            self.ctr = value;
        } else {
            log::debug!("i8042: no keyboard to take {value:#x}");
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            COMMAND_OFFSET => self.status(),
            DATA_OFFSET => self.output.take().unwrap_or(0),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (COMMAND_OFFSET, [command]) => self.command(*command),
            (DATA_OFFSET, [value]) => self.data(*value),
            _ => log::debug!("i8042: ignored write {data:x?} at offset {offset}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> (I8042, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(evt.try_clone().unwrap()), evt)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0xaa];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_signals_the_vmm() {
        let (mut dev, evt) = controller();
        dev.write(COMMAND_OFFSET, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_writes_do_not_reset() {
        let (mut dev, evt) = controller();
        dev.write(COMMAND_OFFSET, &[0xd1]);
        dev.write(DATA_OFFSET, &[0xfe]);
        dev.write(COMMAND_OFFSET, &[0xfe, 0xfe]);
        dev.write(3, &[0xfe]);
        assert!(evt.read().is_err(), "no reset expected");
    }

    #[test]
    fn configuration_byte_reads_back_what_was_written() {
        let (mut dev, _) = controller();
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read(&mut dev, DATA_OFFSET), DEFAULT_CTR);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x30]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x30);
    }

    #[test]
    fn self_test_passes() {
        let (mut dev, _) = controller();
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_OK);
        dev.write(COMMAND_OFFSET, &[CMD_KBD_TEST]);
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_TEST_OK);
    }
}
