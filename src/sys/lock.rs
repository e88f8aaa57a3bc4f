//! Locks that survive a panic elsewhere: a thread that panicked while
//! holding a lock leaves it poisoned, and the relay's shared state (counters,
//! registries, the pool) is still consistent enough to go on serving, so the
//! guard is taken back rather than panicking every later thread too.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the guard back from a poisoned lock.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_back() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let held = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _guard = held.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
