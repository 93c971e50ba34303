//! Locks that carry on past poisoning: a thread that panicked while holding
//! one has already stopped the VM (see `vcpu::stop_on_panic`), and the
//! threads that stop it in order must still get in.

use std::sync::{Mutex, MutexGuard};

pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
