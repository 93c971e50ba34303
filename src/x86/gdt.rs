//! The boot GDT and the segment registers that mirror it.

use kvm_bindings::kvm_segment;

/// Selectors into the boot GDT (index * 8).
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

/// Access/flag words (flags nibble, then access byte) of the boot descriptors.
const CODE64: u16 = 0xa09b; // present, ring 0, exec/read, accessed, L=1, G=1
const CODE32: u16 = 0xc09b; // as above but D=1 (32-bit) instead of L
const DATA: u16 = 0xc093; // present, ring 0, read/write, accessed, D=1, G=1
const TSS64: u16 = 0x808b; // present, busy 64-bit TSS, G=1
const TSS32: u16 = 0x008b; // present, busy 32-bit TSS

/// Encodes one segment descriptor.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT for 64-bit (long mode) entry: null, code, data, TSS.
pub fn long_mode_gdt() -> [u64; 4] {
    [
        0,
        descriptor(CODE64, 0, 0xfffff),
        descriptor(DATA, 0, 0xfffff),
        descriptor(TSS64, 0, 0xfffff),
    ]
}

/// The boot GDT for 32-bit protected-mode entry (PVH): null, code, data, TSS.
pub fn protected_mode_gdt() -> [u64; 4] {
    [
        0,
        descriptor(CODE32, 0, 0xfffff),
        descriptor(DATA, 0, 0xfffff),
        descriptor(TSS32, 0, 0x67),
    ]
}

/// The segment register state KVM needs for a descriptor at `selector`.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let granular = bit(55) == 1;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_descriptor_round_trips() {
        let entry = descriptor(CODE64, 0, 0xfffff);
        assert_eq!(entry, 0x00af_9b00_0000_ffff);
        let seg = segment(entry, CODE_SELECTOR);
        assert_eq!((seg.base, seg.limit, seg.selector), (0, 0xffff_ffff, 8));
        assert_eq!(
            (seg.l, seg.db, seg.g, seg.present, seg.s, seg.type_),
            (1, 0, 1, 1, 1, 0xb)
        );
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn base_and_limit_are_split_and_rejoined() {
        let entry = descriptor(0x408b, 0x1234_5678, 0xabcde);
        let seg = segment(entry, 0x18);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde, "byte-granular limit is not scaled");
        assert_eq!((seg.type_, seg.db, seg.g), (0xb, 1, 0));
    }

    #[test]
    fn protected_mode_code_is_32_bit() {
        let seg = segment(protected_mode_gdt()[1], CODE_SELECTOR);
        assert_eq!((seg.l, seg.db), (0, 1));
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
