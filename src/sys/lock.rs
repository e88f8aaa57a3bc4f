//! Locks that survive a panic elsewhere: a thread that panicked while
//! holding a lock leaves it poisoned, and the relay's shared state (counters,
//! registries, the pool) is still consistent enough to go on serving, so the
//! guard is taken back rather than panicking every later thread too.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Locks `m`, taking the guard back from a poisoned lock.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`Condvar::wait_timeout`], taking the guard back from a poisoned lock.
pub fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout(guard, timeout) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
}

/// [`Condvar::wait_timeout_while`], taking the guard back from a poisoned
/// lock.
pub fn wait_timeout_while<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
    condition: impl FnMut(&mut T) -> bool,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout_while(guard, timeout, condition) {
        Ok((guard, _)) => guard,
        Err(poisoned) => poisoned.into_inner().0,
    }
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

    #[test]
    fn a_poisoned_lock_is_taken_back_after_a_wait() {
        let pair = std::sync::Arc::new((Mutex::new(false), Condvar::new()));
        let held = std::sync::Arc::clone(&pair);
        let _ = std::thread::spawn(move || {
            let _guard = held.0.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        let (m, cv) = &*pair;
        assert!(m.is_poisoned());
        let guard = wait_timeout(cv, lock(m), Duration::from_millis(1));
        assert!(!*guard);
        let guard = wait_timeout_while(cv, guard, Duration::from_millis(1), |done| !*done);
        assert!(!*guard);
    }
}
