//! The one policy for poisoned locks: recover, never propagate.
//!
//! A lock is poisoned when a thread panicked while holding it. Every lock in
//! ShardForge guards data that each critical section leaves whole (a map
//! entry inserted or removed, a value swapped, a counter moved), so the data
//! behind a poisoned lock is still consistent, and one panicking request or
//! task must not turn every later caller into a panic too: nothing from
//! outside may take the process down. So every crate takes its locks
//! through [`lock`], [`read`] and [`write()`], which hand out the guard
//! whether or not the lock is poisoned, and never `lock().expect(..)`; a
//! mutex whose sharing has ended gives its value back through
//! [`into_inner`].
//!
//! A critical section that could leave its data half-updated must be
//! written so it cannot panic half-way (compute first, then assign), not
//! guarded by poisoning.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, recovering the guard of a poisoned lock.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `l` for reading, recovering the guard of a poisoned lock.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Takes `l` for writing, recovering the guard of a poisoned lock.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// The value of a mutex nobody shares any more, recovered from a poisoned
/// lock like the guards above.
pub fn into_inner<T>(m: Mutex<T>) -> T {
    m.into_inner().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, RwLock};

    use super::*;

    #[test]
    fn a_panic_under_the_lock_does_not_poison_later_callers() {
        let m = Arc::new(Mutex::new(1));
        let l = Arc::new(RwLock::new(2));
        let (m2, l2) = (Arc::clone(&m), Arc::clone(&l));
        let joined = std::thread::spawn(move || {
            let _g = m2.lock();
            let _w = l2.write();
            panic!("a request failed");
        })
        .join();
        assert!(joined.is_err());
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        *write(&l) += 1;
        assert_eq!((*lock(&m), *read(&l)), (2, 3));
        let m = Arc::try_unwrap(m).expect("no other holder");
        assert_eq!(into_inner(m), 2);
    }
}
