//! virtio-blk over a raw image file or a host block device.
//!
//! Every request is checked before it touches the file: its descriptors must
//! lie in guest memory, its data must fit the limits the device advertises
//! (SEG_MAX, SIZE_MAX, whole sectors) and stay within the disk. A request
//! that fails any check gets VIRTIO_BLK_S_IOERR (or UNSUPP for unknown
//! types); one without room for a status byte is returned unused. Data
//! moves between the disk and the guest's buffers directly ([`guest_io`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::*;
use virtio_queue::{DescriptorChain, Queue, QueueT, Reader, Writer};
use vm_memory::{GuestAddress, Permissions};

mod guest_io;
use guest_io::{GuestIoError, GuestIovecs};

use super::{
    check_chain, pop_or_rearm, read_config_bytes, GuestMemoryMmap, Served, VirtioDevice,
    BYTES_PER_NOTIFICATION, REQUESTS_PER_NOTIFICATION, VIRTIO_F_VERSION_1,
};

pub const SECTOR_SIZE: u64 = 512;
pub const QUEUE_SIZE: u16 = 256;
/// Most data descriptors in one request.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Most descriptors in one request: the header, SEG_MAX data, the status.
pub const MAX_DESCRIPTORS: u32 = SEG_MAX + 2;
/// Largest single descriptor.
pub const SIZE_MAX: u32 = 1 << 20;
/// Most ranges in one DISCARD or WRITE_ZEROES request.
pub const MAX_RANGES: u32 = 16;
/// Largest range of one DISCARD or WRITE_ZEROES (sectors).
pub const MAX_RANGE_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
/// The GET_ID string's size.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// The most zeros written at once where the file system cannot zero a range.
const ZEROS_CHUNK: usize = 64 * 1024;
/// A request's header: type, reserved, sector.
const HEADER_BYTES: usize = 16;
const CONFIG_SIZE: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("disk {0} does not exist")]
    Missing(PathBuf),
    #[error("disk {0} is a directory, not an image file or block device")]
    Directory(PathBuf),
    #[error("cannot open disk {path}{mode}: {source}")]
    Open {
        path: PathBuf,
        mode: &'static str,
        source: std::io::Error,
    },
    #[error("disk {path} is {size} bytes, not a whole number of 512-byte sectors")]
    OddSize { path: PathBuf, size: u64 },
    #[error("disk {0} is in use by another process (it holds a lock on it); stop that VM or add ,ro to share it read-only")]
    Locked(PathBuf),
    #[error("disk ID {0:?} is longer than {ID_BYTES} bytes")]
    IdTooLong(String),
}

/// Why a request failed, as the guest will be told.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    IoError,
    Unsupported,
}

type RequestResult = Result<(), Failure>;

fn io_error<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Failure {
    move |e| {
        log::debug!("virtio-blk: {what}: {e}");
        Failure::IoError
    }
}

/// One disk.
pub struct Block {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    config: [u8; CONFIG_SIZE],
    /// Whether a host I/O error has been logged at warn level yet.
    host_error_reported: bool,
}

impl Block {
    /// Opens and locks `path`: exclusively for a writable disk, shared for a
    /// read-only one, so no two VMs write one image.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        if id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong(id.to_string()));
        }
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => BlockError::Missing(path.into()),
            _ => BlockError::Open {
                path: path.into(),
                mode: "",
                source,
            },
        })?;
        if meta.is_dir() {
            return Err(BlockError::Directory(path.into()));
        }
        let mode = if read_only {
            " read-only"
        } else {
            " for writing (add ,ro to use it read-only)"
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.into(),
                mode,
                source,
            })?;
        // flock(2) underneath: shared for readers, exclusive for a writer,
        // released when the file is closed.
        let locked = if read_only {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        if locked.is_err() {
            return Err(BlockError::Locked(path.into()));
        }
        // Works for image files and block devices alike (their st_size is 0).
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Open {
                path: path.into(),
                mode,
                source,
            })?;
        if size % SECTOR_SIZE != 0 {
            return Err(BlockError::OddSize {
                path: path.into(),
                size,
            });
        }
        Ok(Self::new(file, path, size / SECTOR_SIZE, read_only, id))
    }

    fn new(file: File, path: &Path, sectors: u64, read_only: bool, id: &str) -> Self {
        let mut id_bytes = [0u8; ID_BYTES];
        id_bytes[..id.len()].copy_from_slice(id.as_bytes());
        let mut config = [0u8; CONFIG_SIZE];
        let mut put = |at: usize, bytes: &[u8]| config[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &sectors.to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &SEG_MAX.to_le_bytes());
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        put(34, &1u16.to_le_bytes()); // one queue
        put(36, &MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &MAX_RANGES.to_le_bytes()); // max_discard_seg
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        put(48, &MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &MAX_RANGES.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        Self {
            file,
            path: path.into(),
            sectors,
            read_only,
            id: id_bytes,
            config,
            host_error_reported: false,
        }
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Byte offset and length of `sectors`-worth of data at `sector`, if it
    /// lies within the disk.
    fn range(&self, sector: u64, bytes: u64) -> Result<u64, Failure> {
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(Failure::IoError)?;
        let end = offset.checked_add(bytes).ok_or(Failure::IoError)?;
        if !bytes.is_multiple_of(SECTOR_SIZE) || end > self.sectors * SECTOR_SIZE {
            log::debug!("virtio-blk: request for {bytes} bytes at sector {sector} is past the end or not whole sectors");
            return Err(Failure::IoError);
        }
        Ok(offset)
    }

    /// A failed operation on the host file: the guest gets IOERR, and the
    /// person running rvmm hears of the first one (a full host disk, a
    /// failing device); later ones go to the debug log, so a guest that
    /// keeps retrying cannot flood it.
    fn host_failure(&mut self, what: &'static str, e: &std::io::Error) -> Failure {
        if self.host_error_reported {
            log::debug!("virtio-blk: {what} on {}: {e}", self.path.display());
        } else {
            self.host_error_reported = true;
            log::warn!(
                "disk {}: {what} failed on the host ({e}); the guest gets an I/O error for it, and further failures are logged at debug level",
                self.path.display()
            );
        }
        Failure::IoError
    }

    /// A failed transfer: a host failure is reported as such, bad guest
    /// buffers only at debug level.
    fn transfer_failure(&mut self, what: &'static str, e: &GuestIoError) -> Failure {
        match e.host_error() {
            Some(host) => self.host_failure(what, host),
            None => {
                log::debug!("virtio-blk: {what}: {e}");
                Failure::IoError
            }
        }
    }

    fn read_into(&mut self, sector: u64, data: &mut GuestIovecs<'_>, len: usize) -> RequestResult {
        let offset = self.range(sector, len as u64)?;
        data.read_from(&self.file, offset)
            .map_err(|e| self.transfer_failure("read", &e))
    }

    fn write_from(&mut self, sector: u64, data: &mut GuestIovecs<'_>, len: usize) -> RequestResult {
        if self.read_only {
            return Err(Failure::IoError);
        }
        let offset = self.range(sector, len as u64)?;
        data.write_to(&self.file, offset)
            .map_err(|e| self.transfer_failure("write", &e))
    }

    /// DISCARD and WRITE_ZEROES: a list of {sector, sectors, flags} ranges.
    fn zero_ranges(&mut self, kind: u32, ranges: &mut Reader<'_>) -> RequestResult {
        if self.read_only {
            return Err(Failure::IoError);
        }
        let bytes = ranges.available_bytes();
        let count = bytes / 16;
        if !bytes.is_multiple_of(16) || count == 0 || count > MAX_RANGES as usize {
            return Err(Failure::IoError);
        }
        for _ in 0..count {
            let mut raw = [0u8; 16];
            ranges
                .read_exact(&mut raw)
                .map_err(io_error("read range"))?;
            let sector = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
            let num = u32::from_le_bytes(raw[8..12].try_into().expect("4 bytes"));
            let flags = u32::from_le_bytes(raw[12..16].try_into().expect("4 bytes"));
            if num > MAX_RANGE_SECTORS || flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
                return Err(Failure::IoError);
            }
            let len = u64::from(num) * SECTOR_SIZE;
            let offset = self.range(sector, len)?;
            let unmap =
                kind == VIRTIO_BLK_T_DISCARD || flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
            self.zero(offset, len, unmap, kind == VIRTIO_BLK_T_DISCARD)?;
        }
        Ok(())
    }

    /// Punches a hole (reads back as zeros) or zeroes in place; falls back
    /// to writing zeros where the file system cannot. A discard is only a
    /// hint, so it succeeds even where nothing can be freed.
    fn zero(&mut self, offset: u64, len: u64, unmap: bool, hint_only: bool) -> RequestResult {
        let mode = libc::FALLOC_FL_KEEP_SIZE
            | if unmap {
                libc::FALLOC_FL_PUNCH_HOLE
            } else {
                libc::FALLOC_FL_ZERO_RANGE
            };
        // SAFETY: fallocate on a descriptor this device owns, with a range
        // checked to lie within the disk; no memory is passed.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if rc == 0 || hint_only {
            return Ok(());
        }
        log::debug!(
            "virtio-blk: fallocate failed ({}); writing zeros",
            std::io::Error::last_os_error()
        );
        let zeros = vec![0; ZEROS_CHUNK];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(ZEROS_CHUNK as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], offset + done)
                .map_err(|e| self.host_failure("write zeros", &e))?;
            done += n as u64;
        }
        Ok(())
    }

    /// Carries out one request whose header has been read: `data_in` is
    /// what the driver wrote after the header, `data_out` the room it left
    /// before the status byte, and `chain` the request's descriptors, whose
    /// buffers reads and writes use directly. Sets `written` to the bytes
    /// written for the guest.
    fn execute(
        &mut self,
        header: [u8; HEADER_BYTES],
        request: Request<'_, '_>,
        written: &mut usize,
    ) -> RequestResult {
        let Request {
            data_in,
            data_out,
            chain,
        } = request;
        let mem = chain.memory();
        let kind = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let sector = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
        // Data must flow the way the request type says: a read carries no
        // driver data, a write leaves nothing for the device to fill in.
        let device_writes = matches!(kind, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
        let driver_writes = matches!(
            kind,
            VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
        );
        let known = device_writes || driver_writes || kind == VIRTIO_BLK_T_FLUSH;
        let misdirected = (!driver_writes && data_in.available_bytes() > 0)
            || (!device_writes && data_out.available_bytes() > 0);
        if known && misdirected {
            log::debug!("virtio-blk: request {kind} has buffers in the wrong direction");
            return Err(Failure::IoError);
        }
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = data_out.available_bytes();
                let mut data =
                    GuestIovecs::new(mem, chain.clone().writable(), 0, len, Permissions::Write)
                        .map_err(|e| self.transfer_failure("read", &e))?;
                let result = self.read_into(sector, &mut data, len);
                *written = data.transferred();
                result
            }
            VIRTIO_BLK_T_OUT => {
                let len = data_in.available_bytes();
                let mut data = GuestIovecs::new(
                    mem,
                    chain.clone().readable(),
                    HEADER_BYTES,
                    len,
                    Permissions::Read,
                )
                .map_err(|e| self.transfer_failure("write", &e))?;
                self.write_from(sector, &mut data, len)
            }
            VIRTIO_BLK_T_FLUSH => {
                if self.read_only {
                    Ok(())
                } else {
                    self.file
                        .sync_data()
                        .map_err(|e| self.host_failure("flush", &e))
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                let n = data_out.available_bytes().min(ID_BYTES);
                let result = data_out
                    .write_all(&self.id[..n])
                    .map_err(io_error("write ID"));
                *written = data_out.bytes_written();
                result
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => self.zero_ranges(kind, data_in),
            other => {
                log::debug!("virtio-blk: unsupported request type {other}");
                Err(Failure::Unsupported)
            }
        }
    }

    /// Serves one request and returns how many bytes it wrote for the guest.
    fn serve(&mut self, chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
        // Descriptors outside guest memory make the chain unusable: give it
        // back without touching anything.
        let (Ok(mut reader), Ok(mut writer)) = (
            Reader::new(mem, chain.clone()),
            Writer::new(mem, chain.clone()),
        ) else {
            log::debug!("virtio-blk: request with descriptors outside guest memory");
            return 0;
        };
        let Some(status_at) = writer.available_bytes().checked_sub(1) else {
            log::debug!("virtio-blk: request without a status byte");
            return 0;
        };
        let Ok(mut status) = writer.split_at(status_at) else {
            return 0;
        };
        let mut header = [0u8; HEADER_BYTES];
        let mut written = 0;
        let result = reader
            .read_exact(&mut header)
            .map_err(io_error("request header"))
            .and_then(|()| {
                let request = Request {
                    data_in: &mut reader,
                    data_out: &mut writer,
                    chain: &chain,
                };
                self.execute(header, request, &mut written)
            });
        let code = match result {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(Failure::IoError) => VIRTIO_BLK_S_IOERR,
            Err(Failure::Unsupported) => VIRTIO_BLK_S_UNSUPP,
        };
        if status.write_all(&[code as u8]).is_err() {
            return 0;
        }
        (written + 1) as u32
    }
}

/// One request's buffers past its header.
struct Request<'r, 'm> {
    data_in: &'r mut Reader<'m>,
    data_out: &'r mut Writer<'m>,
    chain: &'r DescriptorChain<&'m GuestMemoryMmap>,
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let bit = |b: u32| 1u64 << b;
        let mut features = VIRTIO_F_VERSION_1
            | bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
        if self.read_only {
            features |= bit(VIRTIO_BLK_F_RO);
        } else {
            features |= bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Served {
        let (table, size) = (GuestAddress(queue.desc_table()), queue.size());
        let (mut requests, mut bytes) = (0, 0);
        let mut out_of_budget = false;
        while !out_of_budget {
            let Some(chain) = pop_or_rearm(queue, mem) else {
                break;
            };
            let head = chain.head_index();
            // A chain refused by the walk goes back unread, without a status.
            let len = match check_chain(mem, table, size, head, MAX_DESCRIPTORS, SIZE_MAX) {
                Some(chain_bytes) => {
                    bytes += chain_bytes;
                    self.serve(chain, mem)
                }
                None => 0,
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                log::debug!("virtio-blk: cannot return request {head} to the guest: {e}");
                break;
            }
            requests += 1;
            out_of_budget =
                requests == REQUESTS_PER_NOTIFICATION || bytes >= BYTES_PER_NOTIFICATION;
        }
        Served {
            notify_guest: requests > 0 && queue.needs_notification(mem).unwrap_or(true),
            more_pending: out_of_budget,
        }
    }
}

#[cfg(test)]
mod tests;
