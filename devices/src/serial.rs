//! The 8250 UART on COM1, as a bus device. Register emulation is vm-superio's;
//! this file wires it to an interrupt eventfd, an output stream and an input
//! queue that the VMM fills from the host's stdin.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// COM1's port base and length, and its ISA interrupt line.
pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt by signalling an eventfd (an irqfd in the VMM).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Tells the VMM, through an eventfd, that the guest drained the input FIFO
/// and more host input can be queued.
#[derive(Debug)]
pub struct InputSpaceNotifier(EventFd);

impl SerialEvents for InputSpaceNotifier {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        // Failing to wake the VMM only delays input until the next stdin event.
        let _ = self.0.write(1);
    }
}

/// COM1: guest writes go to `out`, host input is queued with [`Self::queue_input`].
/// The UART's registers and unread input, for a snapshot.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SerialConsoleState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

pub struct SerialConsole {
    uart: Serial<EventFdTrigger, InputSpaceNotifier, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// `irq` is signalled to interrupt the guest; `input_space` when the guest
    /// has emptied the receive FIFO.
    pub fn new(irq: EventFd, input_space: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::with_events(
                EventFdTrigger::new(irq),
                InputSpaceNotifier(input_space),
                out,
            ),
        }
    }

    /// A console in the state a snapshot saved; refused when the state is
    /// not one a UART can be in (more input than its FIFO holds).
    pub fn with_state(
        irq: EventFd,
        input_space: EventFd,
        out: Box<dyn Write + Send>,
        state: &SerialConsoleState,
    ) -> Result<Self, String> {
        let state = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = Serial::from_state(
            &state,
            EventFdTrigger::new(irq),
            InputSpaceNotifier(input_space),
            out,
        )
        .map_err(|e| format!("the serial console's state is not a UART's: {e:?}"))?;
        Ok(Self { uart })
    }

    /// The UART's state, for a snapshot.
    pub fn state(&self) -> SerialConsoleState {
        let s = self.uart.state();
        SerialConsoleState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Queues as much of `bytes` as the receive FIFO holds and returns how many
    /// bytes were taken; the caller keeps the rest until the guest reads.
    pub fn queue_input(&mut self, bytes: &[u8]) -> usize {
        if bytes.is_empty() || self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: could not queue input for the guest: {e}");
                0
            }
        }
    }

    /// Whether the guest has room for more input right now.
    pub fn has_input_space(&self) -> bool {
        self.uart.fifo_capacity() > 0
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(reg), 1) if offset < COM1_PORT_LEN => data[0] = self.uart.read(reg),
            _ => {
                log::debug!(
                    "serial: ignored {}-byte read at offset {offset}",
                    data.len()
                );
                data.fill(0xff);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (u8::try_from(offset), data) {
            (Ok(reg), [value]) if offset < COM1_PORT_LEN => {
                if let Err(e) = self.uart.write(reg, *value) {
                    // The host's stdout may be closed; the guest must not notice.
                    log::debug!("serial: write to register {reg} failed: {e}");
                }
            }
            _ => log::debug!(
                "serial: ignored {}-byte write at offset {offset}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 1;
    const IER_RX_READY: u8 = 1;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Fixture {
        serial: SerialConsole,
        irq: EventFd,
        input_space: EventFd,
        out: SharedBuffer,
    }

    fn fixture() -> Fixture {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let input_space = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SharedBuffer::default();
        let serial = SerialConsole::new(
            irq.try_clone().unwrap(),
            input_space.try_clone().unwrap(),
            Box::new(out.clone()),
        );
        Fixture {
            serial,
            irq,
            input_space,
            out,
        }
    }

    fn read_reg(serial: &mut SerialConsole, offset: u64) -> u8 {
        let mut b = [0u8];
        serial.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn guest_writes_reach_the_output() {
        let mut f = fixture();
        for b in b"hi\n" {
            f.serial.write(DATA, &[*b]);
        }
        assert_eq!(f.out.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn queued_input_raises_the_interrupt_and_reads_back_in_order() {
        let mut f = fixture();
        f.serial.write(IER, &[IER_RX_READY]);
        assert_eq!(f.serial.queue_input(b"ok"), 2);
        assert_eq!(f.irq.read().unwrap(), 1, "receive interrupt was not raised");
        assert_eq!(
            read_reg(&mut f.serial, LSR) & LSR_DATA_READY,
            LSR_DATA_READY
        );
        assert_eq!(read_reg(&mut f.serial, DATA), b'o');
        assert_eq!(read_reg(&mut f.serial, DATA), b'k');
        assert_eq!(read_reg(&mut f.serial, LSR) & LSR_DATA_READY, 0);
        assert_eq!(
            f.input_space.read().unwrap(),
            1,
            "VMM was not told the FIFO drained"
        );
    }

    #[test]
    fn input_beyond_the_fifo_is_left_to_the_caller() {
        let mut f = fixture();
        let big = vec![b'x'; 1000];
        let taken = f.serial.queue_input(&big);
        assert!(taken > 0 && taken < big.len());
        assert!(!f.serial.has_input_space());
        assert_eq!(f.serial.queue_input(b"more"), 0);
    }

    #[test]
    fn odd_sized_and_out_of_range_accesses_are_harmless() {
        let mut f = fixture();
        let mut wide = [0u8; 4];
        f.serial.read(DATA, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        f.serial.write(DATA, &[1, 2]);
        f.serial.write(100, &[1]);
        assert_eq!(read_reg(&mut f.serial, 9), 0xff);
        assert!(f.out.0.lock().unwrap().is_empty());
    }
}
