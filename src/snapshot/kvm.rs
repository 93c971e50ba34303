//! What KVM holds of a VM and its vCPUs, as a snapshot keeps it, and
//! putting it back. vCPU state is read on each vCPU's own thread while the
//! VM is paused (their filters allow these reads); it is written before the
//! vCPU threads start.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// One vCPU's state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// (index, value) of every MSR KVM saves that could be read.
    pub msrs: Vec<(u32, u64)>,
}

/// The VM's interrupt controllers, timer and clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmKvmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> String {
    move |e| format!("KVM could not {what}: {e}")
}

/// The MSRs KVM saves for a VM, as listed by the host.
pub fn saved_msr_indices(kvm_handle: &Kvm) -> Result<Vec<u32>, String> {
    kvm_handle
        .get_msr_index_list()
        .map(|list| list.as_slice().to_vec())
        .map_err(kvm("list the MSRs it saves"))
}

/// Reads `indices` from `fd`, leaving out the ones KVM cannot read (it stops
/// at the first of those; the rest are read after it).
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<(u32, u64)>, String> {
    let mut values = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| format!("too many MSRs: {e:?}"))?;
        let read = fd
            .get_msrs(&mut msrs)
            .map_err(kvm("read the vCPU's MSRs"))?;
        values.extend(msrs.as_slice()[..read].iter().map(|e| (e.index, e.data)));
        // The one at `read` failed: skip it.
        rest = &rest[(read + 1).min(rest.len())..];
    }
    Ok(values)
}

/// Reads the state of the vCPU behind `fd`.
pub fn capture_vcpu(fd: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, String> {
    // The events first: reading the MP state may change them.
    let events = fd
        .get_vcpu_events()
        .map_err(kvm("read the vCPU's events"))?;
    let mp_state = fd.get_mp_state().map_err(kvm("read the vCPU's MP state"))?;
    Ok(VcpuState {
        regs: fd.get_regs().map_err(kvm("read the vCPU's registers"))?,
        sregs: fd
            .get_sregs()
            .map_err(kvm("read the vCPU's special registers"))?,
        xsave: fd.get_xsave().map_err(kvm("read the vCPU's FPU state"))?,
        xcrs: fd.get_xcrs().map_err(kvm("read the vCPU's XCRs"))?,
        debugregs: fd
            .get_debug_regs()
            .map_err(kvm("read the vCPU's debug registers"))?,
        lapic: fd.get_lapic().map_err(kvm("read the vCPU's local APIC"))?,
        mp_state,
        events,
        msrs: read_msrs(fd, msr_indices)?,
    })
}

/// Puts `state` into a vCPU whose CPUID is set and that has not run.
pub fn restore_vcpu(fd: &VcpuFd, state: &VcpuState) -> Result<(), String> {
    fd.set_mp_state(state.mp_state)
        .map_err(kvm("set the vCPU's MP state"))?;
    fd.set_regs(&state.regs)
        .map_err(kvm("set the vCPU's registers"))?;
    fd.set_sregs(&state.sregs)
        .map_err(kvm("set the vCPU's special registers"))?;
    // SAFETY: `kvm_xsave` is the legacy 4 KiB area KVM_GET_XSAVE filled on a
    // host of the same CPU model (the snapshot's check), which KVM_SET_XSAVE
    // reads whole.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(kvm("set the vCPU's FPU state"))?;
    fd.set_xcrs(&state.xcrs)
        .map_err(kvm("set the vCPU's XCRs"))?;
    fd.set_debug_regs(&state.debugregs)
        .map_err(kvm("set the vCPU's debug registers"))?;
    fd.set_lapic(&state.lapic)
        .map_err(kvm("set the vCPU's local APIC"))?;
    let entries: Vec<kvm_msr_entry> = state
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| format!("too many MSRs: {e:?}"))?;
    let written = fd.set_msrs(&msrs).map_err(kvm("set the vCPU's MSRs"))?;
    if written != entries.len() {
        return Err(format!(
            "KVM refused MSR {:#x} of the snapshot's vCPU; it was taken on another host",
            entries[written].index
        ));
    }
    fd.set_vcpu_events(&state.events)
        .map_err(kvm("set the vCPU's events"))?;
    Ok(())
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, String> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(kvm("read an interrupt controller"))?;
    Ok(chip)
}

/// Reads the VM's interrupt controllers, PIT and clock.
pub fn capture_vm(vm: &VmFd) -> Result<VmKvmState, String> {
    Ok(VmKvmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm("read the PIT"))?,
        clock: vm.get_clock().map_err(kvm("read the VM's clock"))?,
    })
}

/// Puts `state` into a VM that has its irqchip and PIT and no running vCPU.
pub fn restore_vm(vm: &VmFd, state: &VmKvmState) -> Result<(), String> {
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        vm.set_irqchip(chip)
            .map_err(kvm("set an interrupt controller"))?;
    }
    vm.set_pit2(&state.pit).map_err(kvm("set the PIT"))?;
    // The clock goes on from where it was (no flag: not realtime-adjusted).
    let mut clock = state.clock;
    clock.flags = 0;
    vm.set_clock(&clock).map_err(kvm("set the VM's clock"))?;
    Ok(())
}
