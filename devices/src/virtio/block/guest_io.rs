//! A request's data buffers as iovecs into guest memory, so that the disk is
//! read straight into the guest's pages and written straight from them: one
//! `preadv`/`pwritev` per request, no copy through a buffer of the VMM's.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, GuestMemory, Permissions};

use super::GuestMemoryMmap;

/// Most iovecs one `preadv`/`pwritev` takes (`UIO_MAXIOV` on Linux).
const IOV_MAX: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum GuestIoError {
    #[error("a data buffer is not in guest memory")]
    OutsideGuestMemory,
    #[error("the buffers hold fewer bytes than the request's length")]
    ShortBuffers,
    #[error("the disk ended before the request did")]
    EndOfDisk,
    #[error("{0}")]
    Host(#[from] io::Error),
}

impl GuestIoError {
    /// Whether the host file failed (as opposed to the guest's buffers).
    pub fn host_error(&self) -> Option<&io::Error> {
        match self {
            Self::Host(e) => Some(e),
            _ => None,
        }
    }
}

/// Guest memory as iovecs. They point into the mapping of the memory they
/// were built from, so they borrow it: they cannot outlive it.
pub struct GuestIovecs<'m> {
    iovecs: Vec<libc::iovec>,
    /// The first iovec not yet fully transferred.
    next: usize,
    transferred: usize,
    _memory: PhantomData<&'m GuestMemoryMmap>,
}

impl<'m> GuestIovecs<'m> {
    /// `len` bytes of `descriptors`' buffers, after their first `skip`
    /// bytes, for the device to `access` (write: a read from disk). Each buffer is looked up in `mem` here, so a descriptor that
    /// the guest changed since it was first read still cannot point
    /// outside guest memory.
    pub fn new(
        mem: &'m GuestMemoryMmap,
        descriptors: impl Iterator<Item = Descriptor>,
        mut skip: usize,
        mut len: usize,
        access: Permissions,
    ) -> Result<Self, GuestIoError> {
        let mut iovecs = Vec::new();
        for desc in descriptors {
            if len == 0 {
                break;
            }
            let desc_len = desc.len() as usize;
            if skip >= desc_len {
                skip -= desc_len;
                continue;
            }
            let start = desc
                .addr()
                .checked_add(skip as u64)
                .ok_or(GuestIoError::OutsideGuestMemory)?;
            let count = (desc_len - skip).min(len);
            skip = 0;
            let slices = GuestMemory::get_slices(mem, start, count, access)
                .map_err(|_| GuestIoError::OutsideGuestMemory)?;
            for slice in slices {
                let slice = slice.map_err(|_| GuestIoError::OutsideGuestMemory)?;
                iovecs.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: slice.len(),
                });
            }
            len -= count;
        }
        if len > 0 {
            return Err(GuestIoError::ShortBuffers);
        }
        Ok(Self {
            iovecs,
            next: 0,
            transferred: 0,
            _memory: PhantomData,
        })
    }

    /// Bytes moved so far (all of them once a transfer succeeded).
    pub fn transferred(&self) -> usize {
        self.transferred
    }

    /// Fills the buffers from `file` at `offset`.
    pub fn read_from(&mut self, file: &File, offset: u64) -> Result<(), GuestIoError> {
        self.transfer(offset, |iov, count, at| {
            // SAFETY: every iovec lies within guest memory (checked by
            // `get_slices` when it was built) and that mapping lives at least
            // as long as `'m`; the kernel writes at most `iov_len` bytes to
            // each. Guest memory is never referenced as a Rust slice, so
            // writing it behind the guest's back breaks no aliasing rule.
            unsafe { libc::preadv(file.as_raw_fd(), iov, count, at) }
        })
    }

    /// Writes the buffers to `file` at `offset`.
    pub fn write_to(&mut self, file: &File, offset: u64) -> Result<(), GuestIoError> {
        self.transfer(offset, |iov, count, at| {
            // SAFETY: as for `read_from`; the kernel only reads the buffers.
            unsafe { libc::pwritev(file.as_raw_fd(), iov, count, at) }
        })
    }

    fn transfer(
        &mut self,
        offset: u64,
        call: impl Fn(*const libc::iovec, libc::c_int, libc::off_t) -> isize,
    ) -> Result<(), GuestIoError> {
        while self.next < self.iovecs.len() {
            let batch = &self.iovecs[self.next..];
            let count = batch.len().min(IOV_MAX) as libc::c_int;
            let at = offset
                .checked_add(self.transferred as u64)
                .and_then(|at| libc::off_t::try_from(at).ok())
                .ok_or(GuestIoError::EndOfDisk)?;
            let done = call(batch.as_ptr(), count, at);
            if done < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            if done == 0 {
                return Err(GuestIoError::EndOfDisk);
            }
            self.advance(done as usize);
        }
        Ok(())
    }

    /// Moves past `done` bytes: whole iovecs, then part of the next one.
    fn advance(&mut self, mut done: usize) {
        self.transferred += done;
        while done > 0 && self.next < self.iovecs.len() {
            let iov = &mut self.iovecs[self.next];
            if done >= iov.iov_len {
                done -= iov.iov_len;
                self.next += 1;
            } else {
                // SAFETY: `done` < `iov_len`, so the pointer stays within
                // the same buffer.
                iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(done) }.cast();
                iov.iov_len -= done;
                done = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn iovecs_over<'m>(mem: &'m GuestMemoryMmap, buffers: &[(u64, u32)]) -> GuestIovecs<'m> {
        let descriptors = buffers
            .iter()
            .map(|&(addr, len)| Descriptor::new(addr, len, 0, 0));
        let len = buffers.iter().map(|&(_, len)| len as usize).sum();
        GuestIovecs::new(mem, descriptors, 0, len, Permissions::Read).unwrap()
    }

    fn remaining(iovecs: &GuestIovecs<'_>) -> Vec<usize> {
        iovecs.iovecs[iovecs.next..]
            .iter()
            .map(|iov| iov.iov_len)
            .collect()
    }

    #[test]
    fn a_partial_transfer_resumes_mid_buffer() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let mut iovecs = iovecs_over(&mem, &[(0x1000, 100), (0x2000, 50), (0x3000, 30)]);
        let second = iovecs.iovecs[1].iov_base as usize;
        iovecs.advance(130);
        assert_eq!(remaining(&iovecs), [20, 30]);
        assert_eq!(iovecs.iovecs[iovecs.next].iov_base as usize, second + 30);
        iovecs.advance(20);
        assert_eq!(remaining(&iovecs), [30]);
        iovecs.advance(30);
        assert!(remaining(&iovecs).is_empty());
        assert_eq!(iovecs.transferred(), 180);
    }

    #[test]
    fn buffers_outside_guest_memory_or_too_short_are_refused() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).unwrap();
        let outside = [Descriptor::new((1 << 16) - 8, 16, 0, 0)];
        assert!(matches!(
            GuestIovecs::new(&mem, outside.into_iter(), 0, 16, Permissions::Write),
            Err(GuestIoError::OutsideGuestMemory)
        ));
        let short = [Descriptor::new(0x1000, 16, 0, 0)];
        assert!(matches!(
            GuestIovecs::new(&mem, short.into_iter(), 8, 16, Permissions::Write),
            Err(GuestIoError::ShortBuffers)
        ));
        let wraps = [Descriptor::new(u64::MAX - 4, 16, 0, 0)];
        assert!(GuestIovecs::new(&mem, wraps.into_iter(), 8, 8, Permissions::Write).is_err());
    }
}
