//! Per-vCPU CPUID: KVM's supported list, adjusted so each vCPU knows its own
//! APIC ID, that it runs under a hypervisor, and a topology of `cpus` cores
//! in one socket with one thread each.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types in leaves 0xB/0x1F (ECX bits 15:8).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `cpus` APIC IDs within a package.
fn id_bits(cpus: u8) -> u32 {
    u32::from(cpus.max(1)).next_power_of_two().trailing_zeros()
}

/// Adjusts one entry for vCPU `cpu` of `cpus`.
pub fn adjust_entry(entry: &mut kvm_cpuid_entry2, cpu: u8, cpus: u8) {
    let apic_id = u32::from(cpu);
    let count = u32::from(cpus);
    match entry.function {
        LEAF_FEATURES => {
            // EBX: initial APIC ID in 31:24, logical processors per package in 23:16.
            entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (count << 16);
            entry.ecx |= ECX_HYPERVISOR;
            if cpus > 1 {
                entry.edx |= EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX 31:26: cores per package - 1. 25:14: threads sharing the cache - 1
            // (one thread per core, so 0 for private caches; shared L3 says all).
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | ((count - 1) << 26) | (sharing << 14);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            entry.edx = apic_id;
            match entry.index {
                0 => {
                    entry.eax = 0; // one thread per core: no bits to shift
                    entry.ebx = 1;
                    entry.ecx = (LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = id_bits(cpus);
                    entry.ebx = count;
                    entry.ecx = (LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index; // level type 0: end of the list
                }
            }
        }
        _ => {}
    }
}

/// Returns a copy of `supported` adjusted for vCPU `cpu` of `cpus`.
pub fn vcpu_cpuid(supported: &CpuId, cpu: u8, cpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        adjust_entry(entry, cpu, cpus);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0001_0800,
            eax: 0x0000_0121,
            ..Default::default()
        }
    }

    #[test]
    fn each_vcpu_gets_its_own_apic_id() {
        let supported =
            CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)])
                .unwrap();
        for cpu in 0..4u8 {
            let cpuid = vcpu_cpuid(&supported, cpu, 4);
            let e = cpuid.as_slice();
            assert_eq!(e[0].ebx >> 24, u32::from(cpu));
            assert_eq!((e[0].ebx >> 16) & 0xff, 4);
            assert_eq!(
                e[0].ebx & 0xffff,
                0x0800,
                "CLFLUSH size and brand index kept"
            );
            assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
            assert_ne!(e[0].edx & EDX_HTT, 0);
            assert!(e[1..].iter().all(|l| l.edx == u32::from(cpu)));
            assert_eq!((e[1].ebx, e[1].ecx >> 8), (1, LEVEL_SMT));
            assert_eq!((e[2].eax, e[2].ebx, e[2].ecx >> 8), (2, 4, LEVEL_CORE));
            assert_eq!((e[3].ebx, e[3].ecx), (0, 2));
        }
    }

    #[test]
    fn cache_leaf_reports_core_count() {
        let mut l1 = entry(4, 0); // eax 0x121: level 1 data cache
        adjust_entry(&mut l1, 0, 3);
        assert_eq!(l1.eax >> 26, 2);
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
        let mut l3 = kvm_cpuid_entry2 {
            function: 4,
            index: 3,
            eax: 0x163,
            ..Default::default()
        };
        adjust_entry(&mut l3, 0, 3);
        assert_eq!((l3.eax >> 14) & 0xfff, 2);
    }

    #[test]
    fn single_cpu_topology() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(5), 3);
        let mut e = entry(1, 0);
        adjust_entry(&mut e, 0, 1);
        assert_eq!(e.edx & EDX_HTT, 0);
    }
}
