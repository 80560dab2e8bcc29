//! The memory a build's shard rows may take in one process: one budget,
//! shared on demand.
//!
//! Every byte of rows a build holds in memory while it waits to be sorted
//! and built (chunk buffers, their row index) is reserved from the run's
//! [`MemoryBudget`] through a [`Reservation`], which gives it back when
//! dropped. A shard that receives few rows therefore takes little, a large
//! one takes what the others leave, and when the budget is exhausted the
//! holder spills sorted runs to disk ([`crate::route::collect`]) instead
//! of growing. Nothing is set aside per shard, so the shard count does not
//! limit a build.
//!
//! All shard tasks of one run in one process share one budget
//! ([`for_run`]): on the embedded engine that is every shard; on a cluster,
//! the tasks that run at once in one executor's slots.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};

use sf_manifest::RunId;

/// A byte budget; see the [module docs](self).
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit)
            .field("used", &self.used())
            .field("peak", &self.peak())
            .finish()
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The most bytes reserved at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// An empty reservation against this budget.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    fn try_take(&self, bytes: usize) -> bool {
        let taken = self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(bytes).filter(|n| *n <= self.limit)
        });
        match taken {
            Ok(before) => {
                self.peak.fetch_max(before + bytes, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    fn take(&self, bytes: usize) {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        self.peak.fetch_max(before.saturating_add(bytes), Ordering::Relaxed);
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Bytes held from a [`MemoryBudget`], given back on drop.
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    bytes: usize,
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reservation").field("bytes", &self.bytes).finish()
    }
}

impl Reservation {
    /// Bytes held.
    pub fn size(&self) -> usize {
        self.bytes
    }

    /// The budget this reservation draws on.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Takes `bytes` more if the budget has them.
    pub fn try_grow(&mut self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let ok = self.budget.try_take(bytes);
        if ok {
            self.bytes += bytes;
        }
        ok
    }

    /// Takes `bytes` more even beyond the limit: for memory that is needed
    /// to make progress at all (the callers say how much that can be).
    pub fn grow(&mut self, bytes: usize) {
        self.budget.take(bytes);
        self.bytes += bytes;
    }

    /// Gives back `bytes` (at most what is held).
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.bytes);
        self.budget.give_back(bytes);
        self.bytes -= bytes;
    }

    /// Moves `bytes` (at most what is held) into a new reservation.
    pub fn split(&mut self, bytes: usize) -> Reservation {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Reservation {
            budget: Arc::clone(&self.budget),
            bytes,
        }
    }

    /// Adds what `other` holds to this reservation.
    pub fn merge(&mut self, mut other: Reservation) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes);
        }
    }
}

static BUDGETS: LazyLock<Mutex<HashMap<RunId, Weak<MemoryBudget>>>> = LazyLock::new(Default::default);

/// The budget of `run` in this process, created with `limit` bytes when no
/// task of the run holds one. It lives as long as someone holds it.
pub fn for_run(run: &RunId, limit: usize) -> Arc<MemoryBudget> {
    let mut budgets = sf_manifest::sync::lock(&BUDGETS);
    if let Some(b) = budgets.get(run).and_then(Weak::upgrade) {
        return b;
    }
    budgets.retain(|_, w| w.strong_count() > 0);
    let b = MemoryBudget::new(limit);
    budgets.insert(run.clone(), Arc::downgrade(&b));
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_limit_and_give_back_on_drop() {
        let b = MemoryBudget::new(100);
        let mut a = b.reservation();
        let mut c = b.reservation();
        assert!(a.try_grow(60));
        assert!(!c.try_grow(41), "only 40 left");
        assert!(c.try_grow(40));
        assert_eq!(b.used(), 100);
        a.shrink(10);
        assert_eq!((a.size(), b.used()), (50, 90));
        let part = a.split(20);
        assert_eq!((a.size(), part.size(), b.used()), (30, 20, 90));
        drop(part);
        assert_eq!(b.used(), 70);
        c.merge(a);
        assert_eq!((c.size(), b.used()), (70, 70));
        c.grow(50);
        assert_eq!((b.used(), b.peak()), (120, 120), "grow may pass the limit");
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn tasks_of_a_run_share_one_budget_while_they_hold_it() {
        let run = RunId::new("budget-test-run").expect("id");
        let first = for_run(&run, 1000);
        let second = for_run(&run, 5);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(second.limit(), 1000);
        drop((first, second));
        assert_eq!(for_run(&run, 5).limit(), 5, "a fresh budget once nobody holds it");
    }
}
