//! Enough of the i8042 keyboard controller for Linux to probe it without
//! errors, to reset the machine (`reboot=k` makes Linux write 0xFE, pulse the
//! reset line, to port 0x64), and to press one key combination: Ctrl-Alt-Del,
//! which is how rvmm asks a guest to shut down in order (as Firecracker's
//! `SendCtrlAltDel`). The keyboard behind it answers no commands.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::machine::MachineSignal;

/// Ports 0x60 (data) to 0x64 (command/status).
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
/// The keyboard's IRQ on a PC, raised for each byte of a key press.
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
/// Set when the keyboard is *not* inhibited by the key lock; Linux warns
/// "Keylock active" without it.
const STATUS_NOT_INHIBITED: u8 = 0x10;

/// Configuration byte bits: keyboard interrupt on, keyboard clock off,
/// scan code translation (set 2 to set 1) on.
const CTR_KBD_INTERRUPT: u8 = 0x01;
const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_TRANSLATE: u8 = 0x40;

/// Ctrl-Alt-Del pressed and released (left Ctrl, left Alt, Delete), in scan
/// code set 1 (what a translating controller delivers) and set 2.
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];
/// Key bytes the guest has not read yet are bounded: presses beyond this are
/// dropped (a guest that never reads must not grow the queue).
const MAX_PENDING_KEY_BYTES: usize = 64;

/// Controller configuration at power-on: keyboard interrupt on, system flag
/// set, translation on.
const DEFAULT_CTR: u8 = 0x45;

/// The controller: a configuration byte, one output byte, key bytes waiting
/// behind it, the keyboard interrupt and the reset line.
/// The controller's state, for a snapshot.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct I8042State {
    pub ctr: u8,
    pub output: Option<u8>,
    pub pending_keys: Vec<u8>,
    pub last_was_command: bool,
    pub expecting_ctr: bool,
    pub driver_listening: bool,
}

#[derive(Debug)]
pub struct I8042 {
    reset: Box<dyn MachineSignal>,
    kbd_irq: EventFd,
    ctr: u8,
    output: Option<u8>,
    pending_keys: VecDeque<u8>,
    last_was_command: bool,
    expecting_ctr: bool,
    /// The guest has configured the controller with the keyboard interrupt
    /// on: a keyboard driver is there to hear a key press.
    driver_listening: bool,
}

impl I8042 {
    /// `reset` is raised when the guest asks for a CPU reset; `kbd_irq`
    /// raises the keyboard interrupt.
    pub fn new(reset: Box<dyn MachineSignal>, kbd_irq: EventFd) -> Self {
        Self {
            reset,
            kbd_irq,
            ctr: DEFAULT_CTR,
            output: None,
            pending_keys: VecDeque::new(),
            last_was_command: false,
            expecting_ctr: false,
            driver_listening: false,
        }
    }

    /// The controller's state, for a snapshot.
    pub fn state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            output: self.output,
            pending_keys: self.pending_keys.iter().copied().collect(),
            last_was_command: self.last_was_command,
            expecting_ctr: self.expecting_ctr,
            driver_listening: self.driver_listening,
        }
    }

    /// Takes the state a snapshot saved (at most the key bytes a running
    /// controller would hold).
    pub fn restore(&mut self, state: &I8042State) {
        self.ctr = state.ctr;
        self.output = state.output;
        self.pending_keys = state
            .pending_keys
            .iter()
            .copied()
            .take(MAX_PENDING_KEY_BYTES)
            .collect();
        self.last_was_command = state.last_was_command;
        self.expecting_ctr = state.expecting_ctr;
        self.driver_listening = state.driver_listening;
    }

    /// Presses and releases Ctrl-Alt-Del. Returns false, and does nothing,
    /// when no keyboard driver in the guest would hear it.
    pub fn press_ctrl_alt_del(&mut self) -> bool {
        if !self.driver_listening {
            return false;
        }
        let codes: &[u8] = if self.ctr & CTR_TRANSLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        if self.pending_keys.len() + codes.len() > MAX_PENDING_KEY_BYTES {
            log::warn!("i8042: the guest reads no key presses; Ctrl-Alt-Del dropped");
            return true;
        }
        self.pending_keys.extend(codes);
        self.deliver_key_byte();
        true
    }

    /// Moves the next key byte to the output buffer when it is free and the
    /// guest lets the keyboard interrupt, and raises the interrupt.
    fn deliver_key_byte(&mut self) {
        if self.output.is_some()
            || self.ctr & CTR_KBD_INTERRUPT == 0
            || self.ctr & CTR_KBD_DISABLED != 0
        {
            return;
        }
        if let Some(byte) = self.pending_keys.pop_front() {
            self.output = Some(byte);
            if let Err(e) = self.kbd_irq.write(1) {
                log::error!("i8042: could not raise the keyboard interrupt: {e}");
            }
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM_FLAG | STATUS_NOT_INHIBITED;
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
                self.reset.raise();
            }
            other => log::debug!("i8042: ignored command {other:#x}"),
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        if std::mem::take(&mut self.expecting_ctr) {
            self.ctr = value;
            if value & CTR_KBD_INTERRUPT != 0 && value & CTR_KBD_DISABLED == 0 {
                self.driver_listening = true;
            }
            self.deliver_key_byte();
        } else {
            log::debug!("i8042: no keyboard to take {value:#x}");
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            COMMAND_OFFSET => self.status(),
            DATA_OFFSET => {
                let value = self.output.take().unwrap_or(0);
                self.deliver_key_byte();
                value
            }
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
        let (dev, evt, _) = controller_with_irq();
        (dev, evt)
    }

    fn controller_with_irq() -> (I8042, EventFd, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(Box::new(evt.try_clone().unwrap()), irq.try_clone().unwrap());
        (dev, evt, irq)
    }

    /// What Linux's i8042 driver leaves in the configuration byte.
    fn configure(dev: &mut I8042, ctr: u8) {
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[ctr]);
    }

    /// Reads key bytes as an interrupt handler does: one per interrupt.
    fn drain_keys(dev: &mut I8042, irq: &EventFd) -> Vec<u8> {
        let mut bytes = vec![];
        while irq.read().is_ok() {
            assert_ne!(read(dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
            bytes.push(read(dev, DATA_OFFSET));
        }
        assert_eq!(read(dev, COMMAND_OFFSET) & STATUS_OUTPUT_FULL, 0);
        bytes
    }

    #[test]
    fn ctrl_alt_del_needs_a_listening_driver() {
        let (mut dev, _, irq) = controller_with_irq();
        assert!(
            !dev.press_ctrl_alt_del(),
            "no driver configured the controller yet"
        );
        assert!(irq.read().is_err());
        configure(
            &mut dev,
            CTR_KBD_DISABLED | CTR_KBD_INTERRUPT | CTR_TRANSLATE,
        );
        assert!(!dev.press_ctrl_alt_del(), "keyboard still disabled");
        assert!(irq.read().is_err());
    }

    #[test]
    fn ctrl_alt_del_arrives_byte_by_byte_in_the_configured_scan_code_set() {
        let (mut dev, _, irq) = controller_with_irq();
        configure(&mut dev, CTR_KBD_INTERRUPT | CTR_TRANSLATE | 0x04);
        assert!(dev.press_ctrl_alt_del());
        assert_eq!(drain_keys(&mut dev, &irq), CTRL_ALT_DEL_SET1);
        configure(&mut dev, CTR_KBD_INTERRUPT);
        assert!(dev.press_ctrl_alt_del());
        assert_eq!(drain_keys(&mut dev, &irq), CTRL_ALT_DEL_SET2);
    }

    #[test]
    fn key_bytes_wait_while_the_interrupt_is_off_and_stay_bounded() {
        let (mut dev, _, irq) = controller_with_irq();
        configure(&mut dev, CTR_KBD_INTERRUPT | CTR_TRANSLATE);
        configure(&mut dev, CTR_TRANSLATE);
        for _ in 0..100 {
            assert!(dev.press_ctrl_alt_del());
        }
        assert!(irq.read().is_err(), "interrupt raised while masked");
        assert!(dev.pending_keys.len() <= MAX_PENDING_KEY_BYTES);
        configure(&mut dev, CTR_KBD_INTERRUPT | CTR_TRANSLATE);
        let bytes = drain_keys(&mut dev, &irq);
        assert_eq!(&bytes[..8], CTRL_ALT_DEL_SET1);
        assert!(bytes.len() <= MAX_PENDING_KEY_BYTES);
    }

    #[test]
    fn the_keyboard_is_not_inhibited() {
        let (mut dev, _) = controller();
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & STATUS_NOT_INHIBITED, 0);
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
