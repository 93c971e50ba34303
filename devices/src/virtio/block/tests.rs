//! The block device driven through its virtio-mmio transport by a tiny
//! in-test driver over real guest memory: every request type, and the ways a
//! hostile guest can get requests wrong.

use std::io::Write as _;

use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::bus::BusDevice;
use crate::virtio::mmio::*;
use virtio_bindings::virtio_mmio::*;

const MEM_SIZE: usize = 4 << 20;
const DESC_TABLE: u64 = 0x1000;
const AVAIL_RING: u64 = 0x3000;
const USED_RING: u64 = 0x4000;
const BUFFERS: u64 = 0x10_0000;
const QSIZE: u16 = 256;
const DISK_SECTORS: u64 = 64;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

fn reg_write(t: &mut MmioTransport, offset: u32, value: u32) {
    t.write(u64::from(offset), &value.to_le_bytes());
}

fn reg_read(t: &mut MmioTransport, offset: u32) -> u32 {
    let mut b = [0u8; 4];
    t.read(u64::from(offset), &mut b);
    u32::from_le_bytes(b)
}

/// A minimal virtio driver, as a guest would be.
struct Driver {
    t: MmioTransport,
    mem: GuestMemoryMmap,
    irq: EventFd,
    disk: TempFile,
    avail_idx: u16,
    used_seen: u16,
}

fn disk_bytes() -> Vec<u8> {
    (0..DISK_SECTORS * SECTOR_SIZE)
        .map(|i| (i * 7 % 251) as u8)
        .collect()
}

impl Driver {
    fn new(read_only: bool) -> Self {
        Self::with_queue_size(read_only, QSIZE)
    }

    fn with_queue_size(read_only: bool, size: u16) -> Self {
        Self::with_memory(read_only, size, &[(GuestAddress(0), MEM_SIZE)])
    }

    /// A driver whose guest memory is made of `regions` (separate mappings).
    fn with_memory(read_only: bool, size: u16, regions: &[(GuestAddress, usize)]) -> Self {
        let disk = TempFile::new().unwrap();
        disk.as_file().write_all(&disk_bytes()).unwrap();
        let block = Block::open(disk.as_path(), read_only, "rvmm-test-disk").unwrap();
        let mem = GuestMemoryMmap::from_ranges(regions).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(Box::new(block), mem.clone(), irq.try_clone().unwrap()).unwrap();
        let mut d = Driver {
            t,
            mem,
            irq,
            disk,
            avail_idx: 0,
            used_seen: 0,
        };
        d.initialize(size);
        d
    }

    fn initialize(&mut self, size: u16) {
        self.initialize_with(size, 0);
    }

    /// Sets the device up, taking the feature bits 0-31 in `low_features`.
    fn initialize_with(&mut self, size: u16, low_features: u32) {
        let t = &mut self.t;
        reg_write(t, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE);
        reg_write(t, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        reg_write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        reg_write(t, VIRTIO_MMIO_DRIVER_FEATURES, low_features);
        reg_write(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        reg_write(t, VIRTIO_MMIO_DRIVER_FEATURES, 1); // VERSION_1
        let features_ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        reg_write(t, VIRTIO_MMIO_STATUS, features_ok);
        assert_eq!(
            reg_read(t, VIRTIO_MMIO_STATUS),
            features_ok,
            "device refused VERSION_1"
        );
        reg_write(t, VIRTIO_MMIO_QUEUE_SEL, 0);
        reg_write(t, VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
        reg_write(t, VIRTIO_MMIO_QUEUE_DESC_LOW, DESC_TABLE as u32);
        reg_write(t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, AVAIL_RING as u32);
        reg_write(t, VIRTIO_MMIO_QUEUE_USED_LOW, USED_RING as u32);
        reg_write(t, VIRTIO_MMIO_QUEUE_READY, 1);
        reg_write(t, VIRTIO_MMIO_STATUS, features_ok | STATUS_DRIVER_OK);
        self.avail_idx = 0;
        self.used_seen = 0;
    }

    fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        crate::virtio::write_test_descriptor(
            &self.mem,
            DESC_TABLE,
            index,
            (addr, len, flags, next),
        );
    }

    /// Makes descriptor `head` available and notifies the device.
    fn kick(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QSIZE);
        self.mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
        reg_write(&mut self.t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
        assert_eq!(
            self.t.queue_evts()[0].read().unwrap(),
            1,
            "notify must signal the queue eventfd"
        );
        self.t.process_queue(0);
    }

    /// The used-ring entries added since the last call.
    fn used(&mut self) -> Vec<(u32, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
        let mut out = vec![];
        while self.used_seen != idx {
            let at = USED_RING + 4 + 8 * u64::from(self.used_seen % QSIZE);
            out.push((
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            ));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Sends one request laid out as [header][data...][status]; returns
    /// (status, data the device wrote, used length).
    fn request(&mut self, kind: u32, sector: u64, data: Data) -> (u8, Vec<u8>, u32) {
        let header = BUFFERS;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(header)).unwrap();
        let data_addr = BUFFERS + 0x1000;
        let (len, flags) = match &data {
            Data::None => (0, 0),
            Data::ToDevice(bytes) => {
                self.mem
                    .write_slice(bytes, GuestAddress(data_addr))
                    .unwrap();
                (bytes.len() as u32, 0)
            }
            Data::FromDevice(n) => {
                self.mem
                    .write_slice(&vec![0xee; *n], GuestAddress(data_addr))
                    .unwrap();
                (*n as u32, F_WRITE)
            }
        };
        let status_addr = BUFFERS + 0x20_0000;
        self.mem
            .write_obj(0xffu8, GuestAddress(status_addr))
            .unwrap();
        if len > 0 {
            self.write_desc(0, header, 16, F_NEXT, 1);
            self.write_desc(1, data_addr, len, flags | F_NEXT, 2);
            self.write_desc(2, status_addr, 1, F_WRITE, 0);
        } else {
            self.write_desc(0, header, 16, F_NEXT, 2);
            self.write_desc(2, status_addr, 1, F_WRITE, 0);
        }
        self.kick(0);
        let used = self.used();
        assert_eq!(used.len(), 1, "exactly one request must come back");
        let status: u8 = self.mem.read_obj(GuestAddress(status_addr)).unwrap();
        let mut out = vec![0u8; if flags == F_WRITE { len as usize } else { 0 }];
        self.mem
            .read_slice(&mut out, GuestAddress(data_addr))
            .unwrap();
        (status, out, used[0].1)
    }

    fn file(&self) -> Vec<u8> {
        std::fs::read(self.disk.as_path()).unwrap()
    }
}

enum Data {
    None,
    ToDevice(Vec<u8>),
    FromDevice(usize),
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

#[test]
fn identifies_as_a_virtio_1_block_device() {
    let mut d = Driver::new(false);
    assert_eq!(reg_read(&mut d.t, VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(reg_read(&mut d.t, VIRTIO_MMIO_VERSION), 2);
    assert_eq!(reg_read(&mut d.t, VIRTIO_MMIO_DEVICE_ID), 2);
    reg_write(&mut d.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    assert_eq!(
        reg_read(&mut d.t, VIRTIO_MMIO_DEVICE_FEATURES),
        1,
        "VERSION_1"
    );
    let mut capacity = [0u8; 8];
    d.t.read(0x100, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);
    let mut seg_max = [0u8; 4];
    d.t.read(0x100 + 12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), SEG_MAX);
}

#[test]
fn reads_sectors() {
    let mut d = Driver::new(false);
    let (status, data, used_len) = d.request(VIRTIO_BLK_T_IN, 3, Data::FromDevice(1024));
    assert_eq!(status, OK);
    assert_eq!(data, disk_bytes()[3 * 512..3 * 512 + 1024]);
    assert_eq!(used_len, 1025);
    assert_ne!(d.irq.read().unwrap(), 0, "guest must be interrupted");
    assert_eq!(reg_read(&mut d.t, VIRTIO_MMIO_INTERRUPT_STATUS) & 1, 1);
}

#[test]
fn writes_sectors_and_flushes() {
    let mut d = Driver::new(false);
    let pattern = vec![0x5a; 2048];
    let (status, _, _) = d.request(VIRTIO_BLK_T_OUT, 10, Data::ToDevice(pattern.clone()));
    assert_eq!(status, OK);
    assert_eq!(d.request(VIRTIO_BLK_T_FLUSH, 0, Data::None).0, OK);
    let mut expected = disk_bytes();
    expected[10 * 512..10 * 512 + 2048].copy_from_slice(&pattern);
    assert_eq!(d.file(), expected);
}

/// Guest memory in two mappings that meet at `SPLIT`, so a buffer can
/// straddle them.
const SPLIT: u64 = MEM_SIZE as u64 / 2;

fn split_memory_driver() -> Driver {
    let half = MEM_SIZE / 2;
    Driver::with_memory(
        false,
        QSIZE,
        &[(GuestAddress(0), half), (GuestAddress(SPLIT), half)],
    )
}

#[test]
fn reads_fill_scattered_buffers_across_memory_regions_and_before_the_status() {
    let mut d = split_memory_driver();
    let header = BUFFERS;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    h[8..16].copy_from_slice(&5u64.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(header)).unwrap();
    // 2048 bytes in three buffers: one across the two mappings, a small
    // one, and one whose last byte, after the data, is the status.
    let pieces = [
        (SPLIT - 512, 1000usize),
        (BUFFERS + 0x4000, 24),
        (BUFFERS + 0x8000, 1024),
    ];
    let status_at = BUFFERS + 0x8000 + 1024;
    for &(addr, len) in &pieces {
        d.mem
            .write_slice(&vec![0xee; len], GuestAddress(addr))
            .unwrap();
    }
    d.mem.write_obj(0xffu8, GuestAddress(status_at)).unwrap();
    d.write_desc(0, header, 16, F_NEXT, 1);
    d.write_desc(1, pieces[0].0, 1000, F_WRITE | F_NEXT, 2);
    d.write_desc(2, pieces[1].0, 24, F_WRITE | F_NEXT, 3);
    d.write_desc(3, pieces[2].0, 1025, F_WRITE, 0);
    d.kick(0);
    assert_eq!(d.used(), vec![(0, 2049)]);
    let status: u8 = d.mem.read_obj(GuestAddress(status_at)).unwrap();
    assert_eq!(status, OK);
    let mut got = vec![];
    for &(addr, len) in &pieces {
        let mut piece = vec![0u8; len];
        d.mem.read_slice(&mut piece, GuestAddress(addr)).unwrap();
        got.extend(piece);
    }
    assert_eq!(got, disk_bytes()[5 * 512..9 * 512]);
}

#[test]
fn writes_take_data_after_the_header_in_its_buffer_and_across_memory_regions() {
    let mut d = split_memory_driver();
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 13 % 256) as u8).collect();
    // The header and the first 100 bytes of data share one buffer.
    let first = BUFFERS;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    h[8..16].copy_from_slice(&7u64.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(first)).unwrap();
    d.mem
        .write_slice(&pattern[..100], GuestAddress(first + 16))
        .unwrap();
    let across = SPLIT - 200;
    d.mem
        .write_slice(&pattern[100..512], GuestAddress(across))
        .unwrap();
    let last = BUFFERS + 0x4000;
    d.mem
        .write_slice(&pattern[512..], GuestAddress(last))
        .unwrap();
    let status_at = BUFFERS + 0x8000;
    d.write_desc(0, first, 116, F_NEXT, 1);
    d.write_desc(1, across, 412, F_NEXT, 2);
    d.write_desc(2, last, 512, F_NEXT, 3);
    d.write_desc(3, status_at, 1, F_WRITE, 0);
    d.kick(0);
    assert_eq!(d.used(), vec![(0, 1)]);
    let status: u8 = d.mem.read_obj(GuestAddress(status_at)).unwrap();
    assert_eq!(status, OK);
    let mut expected = disk_bytes();
    expected[7 * 512..9 * 512].copy_from_slice(&pattern);
    assert_eq!(d.file(), expected);
}

#[test]
fn a_disk_that_shrank_under_the_vm_fails_reads_past_its_new_end() {
    let mut d = Driver::new(false);
    d.disk.as_file().set_len(8 * 512).unwrap();
    // Sectors 6-9: the first two are still there, the rest are gone.
    let (status, data, used_len) = d.request(VIRTIO_BLK_T_IN, 6, Data::FromDevice(2048));
    assert_eq!(status, IOERR);
    assert_eq!(data[..1024], disk_bytes()[6 * 512..8 * 512]);
    assert_eq!(used_len, 1025, "only what was read counts as written");
    let (status, data, _) = d.request(VIRTIO_BLK_T_IN, 0, Data::FromDevice(512));
    assert_eq!((status, data), (OK, disk_bytes()[..512].to_vec()));
}

#[test]
fn get_id_returns_the_disk_id() {
    let mut d = Driver::new(false);
    let (status, data, _) = d.request(VIRTIO_BLK_T_GET_ID, 0, Data::FromDevice(ID_BYTES));
    assert_eq!(status, OK);
    assert_eq!(&data[..14], b"rvmm-test-disk");
    assert!(data[14..].iter().all(|b| *b == 0));
}

fn range(sector: u64, sectors: u32, flags: u32) -> Vec<u8> {
    let mut r = sector.to_le_bytes().to_vec();
    r.extend(sectors.to_le_bytes());
    r.extend(flags.to_le_bytes());
    r
}

#[test]
fn discard_and_write_zeroes_clear_only_their_ranges() {
    let mut d = Driver::new(false);
    assert_eq!(
        d.request(VIRTIO_BLK_T_DISCARD, 0, Data::ToDevice(range(4, 2, 0)))
            .0,
        OK
    );
    assert_eq!(
        d.request(
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            Data::ToDevice(range(20, 1, 0))
        )
        .0,
        OK
    );
    let mut expected = disk_bytes();
    expected[4 * 512..6 * 512].fill(0);
    expected[20 * 512..21 * 512].fill(0);
    assert_eq!(d.file(), expected);
    assert_eq!(
        d.file().len() as u64,
        DISK_SECTORS * 512,
        "the file keeps its size"
    );
}

#[test]
fn requests_past_the_end_fail_and_change_nothing() {
    let mut d = Driver::new(false);
    assert_eq!(
        d.request(VIRTIO_BLK_T_IN, DISK_SECTORS, Data::FromDevice(512))
            .0,
        IOERR
    );
    assert_eq!(
        d.request(VIRTIO_BLK_T_IN, DISK_SECTORS - 1, Data::FromDevice(1024))
            .0,
        IOERR
    );
    assert_eq!(
        d.request(
            VIRTIO_BLK_T_OUT,
            DISK_SECTORS - 1,
            Data::ToDevice(vec![1; 1024])
        )
        .0,
        IOERR
    );
    assert_eq!(
        d.request(VIRTIO_BLK_T_OUT, u64::MAX / 4, Data::ToDevice(vec![1; 512]))
            .0,
        IOERR
    );
    assert_eq!(
        d.request(
            VIRTIO_BLK_T_DISCARD,
            0,
            Data::ToDevice(range(DISK_SECTORS, 1, 0))
        )
        .0,
        IOERR
    );
    assert_eq!(d.file(), disk_bytes());
}

#[test]
fn partial_sectors_and_wrong_directions_fail() {
    let mut d = Driver::new(false);
    assert_eq!(
        d.request(VIRTIO_BLK_T_IN, 0, Data::FromDevice(100)).0,
        IOERR
    );
    assert_eq!(
        d.request(VIRTIO_BLK_T_OUT, 0, Data::ToDevice(vec![9; 100]))
            .0,
        IOERR
    );
    // A read whose data buffer the device may not write, a write whose data
    // buffer the device would have to fill.
    assert_eq!(
        d.request(VIRTIO_BLK_T_IN, 0, Data::ToDevice(vec![9; 512]))
            .0,
        IOERR
    );
    assert_eq!(
        d.request(VIRTIO_BLK_T_OUT, 0, Data::FromDevice(512)).0,
        IOERR
    );
    assert_eq!(
        d.request(VIRTIO_BLK_T_DISCARD, 0, Data::ToDevice(vec![0; 15]))
            .0,
        IOERR
    );
    assert_eq!(d.file(), disk_bytes());
}

#[test]
fn unknown_request_types_are_unsupported() {
    let mut d = Driver::new(false);
    assert_eq!(d.request(99, 0, Data::None).0, UNSUPP);
    assert_eq!(d.request(VIRTIO_BLK_T_SCSI_CMD, 0, Data::None).0, UNSUPP);
}

#[test]
fn read_only_disks_refuse_writes() {
    let mut d = Driver::new(true);
    reg_write(&mut d.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    assert_ne!(
        reg_read(&mut d.t, VIRTIO_MMIO_DEVICE_FEATURES) & (1 << VIRTIO_BLK_F_RO),
        0
    );
    assert_eq!(
        d.request(VIRTIO_BLK_T_OUT, 0, Data::ToDevice(vec![1; 512]))
            .0,
        IOERR
    );
    assert_eq!(
        d.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, Data::ToDevice(range(0, 1, 0)))
            .0,
        IOERR
    );
    assert_eq!(d.request(VIRTIO_BLK_T_FLUSH, 0, Data::None).0, OK);
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 0, Data::FromDevice(512)).0, OK);
    assert_eq!(d.file(), disk_bytes());
}

#[test]
fn descriptors_outside_guest_memory_are_returned_untouched() {
    let mut d = Driver::new(false);
    d.write_desc(0, MEM_SIZE as u64 - 8, 16, F_NEXT, 1); // header runs off the end
    d.write_desc(1, BUFFERS, 1, F_WRITE, 0);
    d.kick(0);
    assert_eq!(d.used(), vec![(0, 0)]);
    d.write_desc(0, BUFFERS, 16, F_NEXT, 1);
    d.write_desc(1, u64::MAX - 4, 512, F_WRITE | F_NEXT, 2);
    d.write_desc(2, BUFFERS + 64, 1, F_WRITE, 0);
    d.kick(0);
    assert_eq!(d.used(), vec![(0, 0)]);
    assert_eq!(d.file(), disk_bytes());
}

#[test]
fn descriptor_loops_end() {
    let mut d = Driver::new(false);
    d.mem
        .write_slice(&[0u8; 16], GuestAddress(BUFFERS))
        .unwrap();
    d.write_desc(0, BUFFERS, 16, F_NEXT, 1);
    d.write_desc(1, BUFFERS + 0x1000, 512, F_WRITE | F_NEXT, 0);
    d.kick(0);
    assert_eq!(d.used().len(), 1, "the looping request must come back");
}

#[test]
fn zero_length_buffers_and_missing_status_are_harmless() {
    let mut d = Driver::new(false);
    d.write_desc(0, BUFFERS, 0, F_NEXT, 1);
    d.write_desc(1, BUFFERS + 64, 1, F_WRITE, 0);
    d.kick(0);
    assert_eq!(d.used(), vec![(0, 1)]);
    let status: u8 = d.mem.read_obj(GuestAddress(BUFFERS + 64)).unwrap();
    assert_eq!(status, IOERR, "no header: I/O error");
    // No writable byte at all: nothing to report into.
    d.write_desc(0, BUFFERS, 16, 0, 0);
    d.kick(0);
    assert_eq!(d.used(), vec![(0, 0)]);
}

const F_INDIRECT: u16 = 4;
const STATUS_SENTINEL: u8 = 0xaa;

/// A write request of one sector whose last descriptor is `status_at`,
/// with a sentinel there; returns the header's and the data's addresses.
fn prepare_write(d: &Driver, status_at: u64) -> (u64, u64) {
    let (header, data) = (BUFFERS, BUFFERS + 0x1000);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(header)).unwrap();
    d.mem.write_slice(&[0x5a; 512], GuestAddress(data)).unwrap();
    d.mem
        .write_obj(STATUS_SENTINEL, GuestAddress(status_at))
        .unwrap();
    (header, data)
}

#[test]
fn a_descriptor_longer_than_size_max_is_returned_unread() {
    let mut d = Driver::new(false);
    let status_at = BUFFERS + 0x20_0000;
    let (header, data) = prepare_write(&d, status_at);
    d.write_desc(0, header, 16, F_NEXT, 1);
    d.write_desc(1, data, SIZE_MAX + 512, F_NEXT, 2);
    d.write_desc(2, status_at, 1, F_WRITE, 0);
    d.kick(0);
    assert_eq!(d.used(), vec![(0, 0)]);
    let status: u8 = d.mem.read_obj(GuestAddress(status_at)).unwrap();
    assert_eq!(status, STATUS_SENTINEL, "a refused chain gets no status");
    assert_eq!(d.file(), disk_bytes());
}

#[test]
fn indirect_descriptors_are_refused_since_the_feature_is_not_offered() {
    let mut d = Driver::new(false);
    reg_write(&mut d.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let offered = reg_read(&mut d.t, VIRTIO_MMIO_DEVICE_FEATURES);
    let indirect = virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
    assert_eq!(offered & (1 << indirect), 0);
    let status_at = BUFFERS + 0x20_0000;
    let (header, data) = prepare_write(&d, status_at);
    // A well-formed write, but in an indirect table.
    let table = BUFFERS + 0x8000;
    for (i, (addr, len, flags)) in [
        (header, 16u32, F_NEXT),
        (data, 512, F_NEXT),
        (status_at, 1, F_WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        let at = GuestAddress(table + 16 * i as u64);
        d.mem.write_obj(addr, at).unwrap();
        d.mem.write_obj(len, at.unchecked_add(8)).unwrap();
        d.mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        d.mem.write_obj(i as u16 + 1, at.unchecked_add(14)).unwrap();
    }
    d.write_desc(0, table, 3 * 16, F_INDIRECT, 0);
    d.kick(0);
    assert_eq!(d.used(), vec![(0, 0)]);
    // The largest table virtio-queue would walk: refused just the same.
    d.write_desc(0, BUFFERS, 0xffff * 16, F_INDIRECT, 0);
    d.kick(0);
    assert_eq!(d.used(), vec![(0, 0)]);
    // An indirect descriptor at the end of an ordinary chain.
    d.write_desc(0, header, 16, F_NEXT, 1);
    d.write_desc(1, table, 3 * 16, F_INDIRECT, 0);
    d.kick(0);
    assert_eq!(d.used(), vec![(0, 0)]);
    let status: u8 = d.mem.read_obj(GuestAddress(status_at)).unwrap();
    assert_eq!(status, STATUS_SENTINEL);
    assert_eq!(d.file(), disk_bytes(), "nothing may reach the disk");
}

#[test]
fn one_notification_serves_a_bounded_number_of_requests() {
    let mut d = Driver::new(false);
    let pending = REQUESTS_PER_NOTIFICATION + 10;
    // FLUSH requests: header and status, two descriptors each.
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&VIRTIO_BLK_T_FLUSH.to_le_bytes());
    d.mem.write_slice(&h, GuestAddress(BUFFERS)).unwrap();
    for r in 0..pending as u16 {
        d.write_desc(2 * r, BUFFERS, 16, F_NEXT, 2 * r + 1);
        d.write_desc(2 * r + 1, BUFFERS + 0x100 + u64::from(r), 1, F_WRITE, 0);
        let slot = u64::from(r);
        d.mem
            .write_obj(2 * r, GuestAddress(AVAIL_RING + 4 + 2 * slot))
            .unwrap();
    }
    d.mem
        .write_obj(pending as u16, GuestAddress(AVAIL_RING + 2))
        .unwrap();
    assert!(d.t.process_queue(0), "requests are left: serve again");
    assert_eq!(d.used().len(), REQUESTS_PER_NOTIFICATION);
    assert!(!d.t.process_queue(0), "nothing is left");
    assert_eq!(d.used().len(), 10);
}

#[test]
fn a_queue_size_that_is_not_a_power_of_two_is_never_used() {
    let mut d = Driver::with_queue_size(false, 100);
    d.write_desc(0, BUFFERS, 16, F_NEXT, 1);
    d.write_desc(1, BUFFERS + 64, 1, F_WRITE, 0);
    d.kick(0);
    assert!(d.used().is_empty());
    assert_ne!(
        reg_read(&mut d.t, VIRTIO_MMIO_STATUS) & STATUS_NEEDS_RESET,
        0
    );
}

#[test]
fn avail_index_far_ahead_is_not_followed() {
    let mut d = Driver::new(false);
    d.mem
        .write_obj(1000u16, GuestAddress(AVAIL_RING + 2))
        .unwrap();
    d.t.process_queue(0);
    assert!(d.used().is_empty());
}

#[test]
fn notifications_before_the_driver_is_ready_do_nothing() {
    let disk = TempFile::new().unwrap();
    disk.as_file().write_all(&[0; 512]).unwrap();
    let block = Block::open(disk.as_path(), false, "x").unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut t = MmioTransport::new(
        Box::new(block),
        mem,
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    )
    .unwrap();
    reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    reg_write(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 7); // a queue that does not exist
    t.process_queue(0);
    t.process_queue(7);
    // Queue setup before FEATURES_OK is ignored.
    reg_write(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
    assert_eq!(reg_read(&mut t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert!(!t.is_activated());
}

#[test]
fn features_the_device_did_not_offer_are_refused() {
    let mut d = Driver::new(false);
    reg_write(&mut d.t, VIRTIO_MMIO_STATUS, 0);
    reg_write(
        &mut d.t,
        VIRTIO_MMIO_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER,
    );
    reg_write(&mut d.t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    reg_write(&mut d.t, VIRTIO_MMIO_DRIVER_FEATURES, 1 | 1 << 20);
    reg_write(
        &mut d.t,
        VIRTIO_MMIO_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_eq!(
        reg_read(&mut d.t, VIRTIO_MMIO_STATUS) & STATUS_FEATURES_OK,
        0
    );
}

#[test]
fn reset_in_the_middle_of_io_stops_it_and_allows_reinitialization() {
    let mut d = Driver::new(false);
    // A write is made available, then the driver resets before the device runs.
    d.mem
        .write_slice(
            &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            GuestAddress(BUFFERS),
        )
        .unwrap();
    d.mem
        .write_slice(&[0x77; 512], GuestAddress(BUFFERS + 0x1000))
        .unwrap();
    d.write_desc(0, BUFFERS, 16, F_NEXT, 1);
    d.write_desc(1, BUFFERS + 0x1000, 512, F_NEXT, 2);
    d.write_desc(2, BUFFERS + 0x20_0000, 1, F_WRITE, 0);
    d.mem.write_obj(0u16, GuestAddress(AVAIL_RING + 4)).unwrap();
    d.mem.write_obj(1u16, GuestAddress(AVAIL_RING + 2)).unwrap();
    reg_write(&mut d.t, VIRTIO_MMIO_STATUS, 0);
    assert_eq!(reg_read(&mut d.t, VIRTIO_MMIO_STATUS), 0);
    assert_eq!(reg_read(&mut d.t, VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(
        d.t.queue_evts()[0].read().unwrap(),
        1,
        "a reset wakes the thread that serves the queues, where the device forgets its state"
    );
    d.t.process_queue(0);
    assert_eq!(
        d.file(),
        disk_bytes(),
        "a reset device must not serve old requests"
    );
    // Start over: zero the rings as a fresh driver would, and use the device.
    d.mem
        .write_slice(&[0u8; 0x2000], GuestAddress(AVAIL_RING))
        .unwrap();
    d.initialize(QSIZE);
    let (status, data, _) = d.request(VIRTIO_BLK_T_IN, 0, Data::FromDevice(512));
    assert_eq!((status, data), (OK, disk_bytes()[..512].to_vec()));
}

#[test]
fn open_refuses_bad_disks() {
    let dir = TempFile::new().unwrap();
    let odd = dir.as_path();
    dir.as_file().write_all(&[0; 700]).unwrap();
    assert!(matches!(
        Block::open(odd, false, "x"),
        Err(BlockError::OddSize { size: 700, .. })
    ));
    assert!(matches!(
        Block::open(Path::new("/nonexistent/disk"), false, "x"),
        Err(BlockError::Missing(_))
    ));
    assert!(matches!(
        Block::open(Path::new("/"), false, "x"),
        Err(BlockError::Directory(_))
    ));
    assert!(matches!(
        Block::open(odd, false, &"x".repeat(21)),
        Err(BlockError::IdTooLong(_))
    ));
}

#[test]
fn a_disk_open_for_writing_is_locked() {
    let disk = TempFile::new().unwrap();
    disk.as_file().write_all(&[0; 512]).unwrap();
    let first = Block::open(disk.as_path(), false, "a").unwrap();
    assert!(matches!(
        Block::open(disk.as_path(), false, "b"),
        Err(BlockError::Locked(_))
    ));
    assert!(matches!(
        Block::open(disk.as_path(), true, "b"),
        Err(BlockError::Locked(_))
    ));
    drop(first);
    let ro1 = Block::open(disk.as_path(), true, "a").unwrap();
    let _ro2 = Block::open(disk.as_path(), true, "b").expect("read-only disks can be shared");
    assert!(matches!(
        Block::open(disk.as_path(), false, "c"),
        Err(BlockError::Locked(_))
    ));
    drop(ro1);
}

#[test]
fn with_event_idx_the_guest_learns_where_to_kick_and_is_interrupted_when_it_asked() {
    let mut d = Driver::new(false);
    reg_write(&mut d.t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    let offered = reg_read(&mut d.t, VIRTIO_MMIO_DEVICE_FEATURES);
    assert_ne!(
        u64::from(offered) & crate::virtio::VIRTIO_RING_F_EVENT_IDX,
        0
    );
    reg_write(&mut d.t, VIRTIO_MMIO_STATUS, 0);
    d.initialize_with(QSIZE, crate::virtio::VIRTIO_RING_F_EVENT_IDX as u32);
    let _ = d.t.queue_evts()[0].read();
    let _ = d.irq.read();
    // The driver asks for an interrupt only once its second request is done
    // (used_event, after the avail ring, is 1).
    let used_event = AVAIL_RING + 4 + 2 * u64::from(QSIZE);
    d.mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    let avail_event = USED_RING + 4 + 8 * u64::from(QSIZE);
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 0, Data::FromDevice(512)).0, OK);
    assert!(
        d.irq.read().is_err(),
        "no interrupt before the one asked for"
    );
    let kick_at: u16 = d.mem.read_obj(GuestAddress(avail_event)).unwrap();
    assert_eq!(kick_at, 1, "the guest is told to kick for its next request");
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 1, Data::FromDevice(512)).0, OK);
    assert_eq!(
        d.irq.read().unwrap(),
        1,
        "the interrupt the guest asked for"
    );
    let kick_at: u16 = d.mem.read_obj(GuestAddress(avail_event)).unwrap();
    assert_eq!(kick_at, 2);
}
