//! The VMM's own heap and stack, kept small because every VM pays for them
//! privately: one malloc arena for all threads, and what setup freed or
//! left below its frames handed back to the kernel before the guest runs.
//!
//! glibc gives each thread that allocates an arena of its own (64 MiB of
//! address space, and its first pages touched); rvmm's threads allocate
//! little after setup, so they share the main one. Setup (argument and
//! file parsing, device construction) frees most of what it allocated,
//! but free pages below the heap's top stay resident until trimmed.

/// Before any thread starts: every thread allocates from the main arena.
pub fn one_arena() {
    // SAFETY: mallopt only changes malloc's tunables; it is called before
    // any other thread exists, and a failure (0) leaves the defaults.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// Returns the heap's free pages to the kernel: after setup, before the
/// VMM thread settles into serving the guest.
pub fn return_free_pages() {
    // SAFETY: malloc_trim only releases memory malloc holds free; nothing
    // of the program's refers to it.
    unsafe { libc::malloc_trim(0) };
}

/// How far below the caller's frame [`return_unused_stack`] reaches: more
/// than setup uses (under 32 KiB), and well within the 128 KiB that the
/// kernel maps below the arguments of a new process for its stack.
const SETUP_STACK_DEPTH: usize = 64 << 10;

/// On the main thread, hands back the stack pages below the caller's frame
/// that setup's deeper calls touched: resident otherwise for as long as the
/// VM runs. What lies below a thread's stack pointer is dead by the ABI;
/// a later call there gets zeroed pages. Only the main thread: the kernel
/// keeps a guard gap below its stack, so the range can reach no other
/// mapping, as it might below a thread stack of unknown size.
#[inline(never)]
pub fn return_unused_stack() {
    // SAFETY: getpid and gettid only read this thread's IDs.
    if unsafe { libc::gettid() != libc::getpid() } {
        return;
    }
    let page = 4096;
    let frame = 0u8;
    // The page under this frame's page stays: the call below runs there.
    let end = (std::ptr::addr_of!(frame) as usize & !(page - 1)) - page;
    let start = end - SETUP_STACK_DEPTH;
    // SAFETY: [start, end) lies below every live frame of this thread (and
    // the red zone), so nothing refers to it; MADV_DONTNEED drops its pages,
    // which read as zeroes if touched again. Where the range reaches below
    // the stack's mapping (a small RLIMIT_STACK), the kernel still drops
    // the pages of the mapped part and answers ENOMEM.
    let ret =
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    if ret != 0 {
        log::debug!(
            "the stack below the event loop stays resident in part: {}",
            std::io::Error::last_os_error()
        );
    }
}
