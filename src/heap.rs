//! The VMM's own heap, kept small because every VM pays for it privately:
//! one malloc arena for all threads, and what setup freed handed back to
//! the kernel before the guest runs.
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
