//! A built VM serving its guest: the event loop on the thread that built
//! it, until the VM stops; then the vCPUs stopped and joined in order.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber};

use crate::console::RawTerminal;
use crate::console_output::OutputPump;
use crate::pit_setup::PitSetup;
use crate::vcpu::{self, Pause, StopError, StopReason, VcpuHandle, VmStop};
use crate::vm::Vm;
use crate::vmm::phase;

/// What a built VM keeps while it runs; fields drop in this order after
/// the vCPUs have been joined, the VM and its memory last.
pub(crate) struct RunningVm {
    pub(crate) events: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    pub(crate) stop: Arc<VmStop>,
    pub(crate) pause: Arc<Pause>,
    pub(crate) vcpus: Vec<VcpuHandle>,
    pub(crate) pit_setup: PitSetup,
    pub(crate) output_pump: Arc<Mutex<OutputPump>>,
    pub(crate) terminal: Option<RawTerminal>,
    /// Held, not read: the vCPUs run on its descriptor and memory.
    pub(crate) _vm: Vm,
}

impl RunningVm {
    /// Serves the guest's devices until the VM stops, then stops it in
    /// order and says why it stopped.
    pub(crate) fn serve(mut self) -> StopReason {
        // The setup's pages, on the heap and on this thread's stack below
        // the loop's frames, would stay resident for the VM's whole life.
        crate::heap::return_free_pages();
        crate::heap::return_unused_stack();
        run_event_loop(&mut self.events, &self.stop);
        // Paused vCPUs wait outside the guest: let them see the stop.
        self.pause.resume();
        for handle in &self.vcpus {
            handle.kick();
        }
        for handle in self.vcpus.drain(..) {
            if let Err(e) = handle.join() {
                log::error!("{e}");
            }
        }
        // It is done long before a VM stops, unless the VM stopped at once.
        self.pit_setup.join();
        crate::sync::lock(&self.output_pump).finish();
        drop(self.terminal.take());
        phase("VM stopped");
        self.stop.reason().unwrap_or(StopReason::Shutdown)
    }
}

/// Serves events until the VM stops. A failure of the loop, or a panic in
/// a device while it serves an event, stops the VM in order (vCPUs kicked
/// and joined, terminal restored) instead of leaving vCPU threads running.
fn run_event_loop<T: MutEventSubscriber + ?Sized>(
    events: &mut EventManager<Arc<Mutex<T>>>,
    stop: &VmStop,
) {
    while !stop.is_stopping() {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| events.run())) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => stop.request(StopReason::Error(StopError::EventLoop(e.to_string()))),
            Err(panic) => stop.request(StopReason::Error(StopError::EventLoopPanicked(
                vcpu::panic_message(panic.as_ref()),
            ))),
        }
    }
}
