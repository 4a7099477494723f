//! Spinlocks whose type says what they disable, with optional lock statistics.
//!
//! `SpinLock<T, IrqsOff>` (alias [`IrqSpinLock`]) disables local interrupts for as long as the
//! guard lives; `SpinLock<T, PreemptOff>` only disables preemption. Statistics (the lockstat
//! columns: acquisitions, contentions, wait and hold time min/max/total) are gathered for every
//! lock while [`set_stats_enabled`] is on; timestamps come from [`Platform::now_ns`](crate::sync::platform::Platform::now_ns).

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use alloc::boxed::Box;

use super::platform;
use crate::stats::Log2Histogram;
use crate::stats::histogram::{BUCKETS, percentile_upper_bound};

static STATS_ENABLED: AtomicBool = AtomicBool::new(false);

/// Switches lock statistics on or off for every lock, at run time.
pub fn set_stats_enabled(on: bool) {
    STATS_ENABLED.store(on, Ordering::Relaxed);
}

/// Whether lock statistics are being gathered.
pub fn stats_enabled() -> bool {
    STATS_ENABLED.load(Ordering::Relaxed)
}

/// What a lock disables while held.
pub trait LockMode {
    /// Disables what this mode disables; returns the state to hand back to `leave`.
    fn enter() -> bool;
    /// Restores what `enter` changed.
    fn leave(state: bool);
}

/// Local interrupts off while held: for anything an interrupt handler touches.
pub struct IrqsOff;
/// Preemption off while held: for data interrupt handlers never touch.
pub struct PreemptOff;

impl LockMode for IrqsOff {
    fn enter() -> bool {
        platform::get().irq_save()
    }
    fn leave(was_enabled: bool) {
        platform::get().irq_restore(was_enabled)
    }
}

impl LockMode for PreemptOff {
    fn enter() -> bool {
        platform::get().preempt_disable();
        false
    }
    fn leave(_: bool) {
        platform::get().preempt_enable()
    }
}

/// Lock statistics, the lockstat columns. Times in nanoseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LockStatSnapshot {
    pub acquisitions: u64,
    pub contentions: u64,
    pub wait_min: u64,
    pub wait_max: u64,
    pub wait_total: u64,
    pub hold_min: u64,
    pub hold_max: u64,
    pub hold_total: u64,
    /// Hold times as a log2 histogram in nanoseconds (buckets of
    /// [`Log2Histogram`]): the typical hold, which the maximum (set
    /// by the host descheduling a vCPU that holds the lock) hides.
    pub hold_log2_ns: [u64; BUCKETS],
}

impl LockStatSnapshot {
    /// Adds `other`'s counts to this one (min of mins, max of maxes, sum of totals).
    pub fn merge(&mut self, other: &LockStatSnapshot) {
        let min = |a: u64, b: u64, a_empty: bool, b_empty: bool| match (a_empty, b_empty) {
            (true, _) => b,
            (_, true) => a,
            _ => a.min(b),
        };
        self.wait_min = min(
            self.wait_min,
            other.wait_min,
            self.contentions == 0,
            other.contentions == 0,
        );
        self.hold_min = min(
            self.hold_min,
            other.hold_min,
            self.acquisitions == 0,
            other.acquisitions == 0,
        );
        self.acquisitions += other.acquisitions;
        self.contentions += other.contentions;
        self.wait_max = self.wait_max.max(other.wait_max);
        self.hold_max = self.hold_max.max(other.hold_max);
        self.wait_total += other.wait_total;
        self.hold_total += other.hold_total;
        for (mine, theirs) in self.hold_log2_ns.iter_mut().zip(other.hold_log2_ns) {
            *mine += theirs;
        }
    }

    /// The upper bound of the log2 bucket holding the `pct`-th percentile hold, in ns.
    pub fn hold_percentile_ns(&self, pct: u64) -> u64 {
        percentile_upper_bound(&self.hold_log2_ns, pct)
    }
}

#[derive(Default)]
struct LockStats {
    acquisitions: AtomicU64,
    contentions: AtomicU64,
    wait_min: AtomicU64,
    wait_max: AtomicU64,
    wait_total: AtomicU64,
    hold_min: AtomicU64,
    hold_max: AtomicU64,
    hold_total: AtomicU64,
    /// Hold times, for the locks made with one (`SpinLock::with_hold_histogram`): 256 bytes
    /// every request slot's lock need not carry (the pointer costs 8).
    holds: Option<Box<Log2Histogram>>,
}

impl LockStats {
    const fn new() -> Self {
        LockStats {
            acquisitions: AtomicU64::new(0),
            contentions: AtomicU64::new(0),
            wait_min: AtomicU64::new(u64::MAX),
            wait_max: AtomicU64::new(0),
            wait_total: AtomicU64::new(0),
            hold_min: AtomicU64::new(u64::MAX),
            hold_max: AtomicU64::new(0),
            hold_total: AtomicU64::new(0),
            holds: None,
        }
    }

    fn record_wait(&self, ns: u64) {
        self.contentions.fetch_add(1, Ordering::Relaxed);
        self.wait_total.fetch_add(ns, Ordering::Relaxed);
        self.wait_min.fetch_min(ns, Ordering::Relaxed);
        self.wait_max.fetch_max(ns, Ordering::Relaxed);
    }

    fn record_hold(&self, ns: u64) {
        self.acquisitions.fetch_add(1, Ordering::Relaxed);
        self.hold_total.fetch_add(ns, Ordering::Relaxed);
        self.hold_min.fetch_min(ns, Ordering::Relaxed);
        self.hold_max.fetch_max(ns, Ordering::Relaxed);
        if let Some(holds) = &self.holds {
            holds.record(ns);
        }
    }

    fn snapshot(&self) -> LockStatSnapshot {
        let min = |v: &AtomicU64| match v.load(Ordering::Relaxed) {
            u64::MAX => 0,
            v => v,
        };
        LockStatSnapshot {
            acquisitions: self.acquisitions.load(Ordering::Relaxed),
            contentions: self.contentions.load(Ordering::Relaxed),
            wait_min: min(&self.wait_min),
            wait_max: self.wait_max.load(Ordering::Relaxed),
            wait_total: self.wait_total.load(Ordering::Relaxed),
            hold_min: min(&self.hold_min),
            hold_max: self.hold_max.load(Ordering::Relaxed),
            hold_total: self.hold_total.load(Ordering::Relaxed),
            hold_log2_ns: self.holds.as_ref().map_or([0; BUCKETS], |h| h.counts()),
        }
    }

    fn reset(&self) {
        for v in [
            &self.acquisitions,
            &self.contentions,
            &self.wait_max,
            &self.wait_total,
        ] {
            v.store(0, Ordering::Relaxed);
        }
        for v in [&self.hold_max, &self.hold_total] {
            v.store(0, Ordering::Relaxed);
        }
        self.wait_min.store(u64::MAX, Ordering::Relaxed);
        self.hold_min.store(u64::MAX, Ordering::Relaxed);
        if let Some(holds) = &self.holds {
            holds.reset();
        }
    }
}

/// A named spinlock; `M` says what it disables while held.
pub struct SpinLock<T: ?Sized, M: LockMode = PreemptOff> {
    name: &'static str,
    locked: AtomicBool,
    stats: LockStats,
    _mode: PhantomData<M>,
    data: UnsafeCell<T>,
}

/// A spinlock that disables local interrupts while held.
pub type IrqSpinLock<T> = SpinLock<T, IrqsOff>;

// SAFETY: the lock hands out access to `data` to one holder at a time.
unsafe impl<T: ?Sized + Send, M: LockMode> Sync for SpinLock<T, M> {}
// SAFETY: moving the lock moves the data; no thread-affine state inside.
unsafe impl<T: ?Sized + Send, M: LockMode> Send for SpinLock<T, M> {}

impl<T, M: LockMode> SpinLock<T, M> {
    /// A new unlocked lock; `name` labels its statistics.
    pub const fn new(name: &'static str, value: T) -> Self {
        SpinLock {
            name,
            locked: AtomicBool::new(false),
            stats: LockStats::new(),
            _mode: PhantomData,
            data: UnsafeCell::new(value),
        }
    }

    /// Like [`new`](Self::new), and while statistics are on it also keeps its hold times as a
    /// log2 histogram (in [`LockStatSnapshot::hold_log2_ns`]). Allocates.
    pub fn with_hold_histogram(name: &'static str, value: T) -> Self {
        let mut lock = Self::new(name, value);
        lock.stats.holds = Some(Box::new(Log2Histogram::new()));
        lock
    }
}

impl<T: ?Sized, M: LockMode> SpinLock<T, M> {
    /// The lock's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Spins until the lock is taken.
    pub fn lock(&self) -> SpinGuard<'_, T, M> {
        let state = M::enter();
        let stats = stats_enabled();
        if self.try_acquire() {
            return self.guard(state, stats);
        }
        let wait_start = if stats { platform::get().now_ns() } else { 0 };
        loop {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
            if self.try_acquire() {
                break;
            }
        }
        if stats {
            self.stats
                .record_wait(platform::get().now_ns().saturating_sub(wait_start));
        }
        self.guard(state, stats)
    }

    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T, M>> {
        let state = M::enter();
        if self.try_acquire() {
            Some(self.guard(state, stats_enabled()))
        } else {
            M::leave(state);
            None
        }
    }

    /// This lock's statistics since the last reset.
    pub fn stats(&self) -> LockStatSnapshot {
        self.stats.snapshot()
    }

    /// Clears this lock's statistics.
    pub fn reset_stats(&self) {
        self.stats.reset()
    }

    fn try_acquire(&self) -> bool {
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    fn guard(&self, state: bool, stats: bool) -> SpinGuard<'_, T, M> {
        SpinGuard {
            lock: self,
            state,
            acquired_at: if stats {
                Some(platform::get().now_ns())
            } else {
                None
            },
            _not_send: PhantomData,
        }
    }
}

/// Access to the data of a held [`SpinLock`]. Not `Send`: it must be released on the CPU that
/// took it, because it restores that CPU's interrupt or preemption state.
pub struct SpinGuard<'a, T: ?Sized, M: LockMode> {
    lock: &'a SpinLock<T, M>,
    state: bool,
    acquired_at: Option<u64>,
    _not_send: PhantomData<*const ()>,
}

impl<T: ?Sized, M: LockMode> Deref for SpinGuard<'_, T, M> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized, M: LockMode> DerefMut for SpinGuard<'_, T, M> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, and `&mut self` makes this the only access.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized, M: LockMode> Drop for SpinGuard<'_, T, M> {
    fn drop(&mut self) {
        if let Some(start) = self.acquired_at {
            self.lock
                .stats
                .record_hold(platform::get().now_ns().saturating_sub(start));
        }
        self.lock.locked.store(false, Ordering::Release);
        M::leave(self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::vec::Vec;

    /// Hold times land in log2 buckets of nanoseconds, whose percentiles show the typical hold
    /// beside the maximum: 98 short holds and 2 long ones give a p50 of a short one and a p99 of
    /// a long one; merging two locks' snapshots adds their buckets.
    #[test]
    fn hold_percentiles_come_from_the_log2_histogram() {
        let stats = LockStats::new();
        stats.record_hold(5);
        assert_eq!(
            stats.snapshot().hold_log2_ns,
            [0; BUCKETS],
            "none asked for"
        );
        let mut stats = LockStats::new();
        stats.holds = Some(Box::new(Log2Histogram::new()));
        for _ in 0..98 {
            stats.record_hold(3_000); // bucket [2048, 4095]
        }
        stats.record_hold(1_000_000); // bucket [2^19, 2^20 - 1]
        stats.record_hold(1_000_000);
        let one = stats.snapshot();
        assert_eq!(one.hold_log2_ns[11], 98);
        assert_eq!(one.hold_log2_ns[19], 2);
        assert_eq!(one.hold_percentile_ns(50), 4095);
        assert_eq!(one.hold_percentile_ns(98), 4095);
        assert_eq!(one.hold_percentile_ns(99), (1 << 20) - 1);
        assert_eq!(one.hold_max, 1_000_000);
        let mut merged = one;
        merged.merge(&one);
        assert_eq!(merged.hold_log2_ns[11], 196);
        assert_eq!(merged.hold_percentile_ns(99), (1 << 20) - 1);
        stats.reset();
        assert_eq!(
            stats.snapshot().hold_percentile_ns(50),
            0,
            "reset empties it"
        );
    }

    #[test]
    fn merge_keeps_min_of_nonempty_and_sums_totals() {
        let mut a = LockStatSnapshot::default();
        let b = LockStatSnapshot {
            acquisitions: 2,
            contentions: 1,
            wait_min: 5,
            wait_max: 5,
            wait_total: 5,
            hold_min: 3,
            hold_max: 7,
            hold_total: 10,
            ..LockStatSnapshot::default()
        };
        a.merge(&b);
        assert_eq!(a, b);
        let c = LockStatSnapshot {
            acquisitions: 1,
            hold_min: 1,
            hold_max: 1,
            hold_total: 1,
            ..Default::default()
        };
        a.merge(&c);
        assert_eq!(a.hold_min, 1);
        assert_eq!(
            a.wait_min, 5,
            "an empty wait column must not pull the minimum to 0"
        );
        assert_eq!(a.acquisitions, 3);
        assert_eq!(a.hold_total, 11);
    }

    #[test]
    fn threads_never_overlap_and_nothing_is_lost() {
        let lock = Arc::new(SpinLock::<u64>::new("test", 0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let mut g = lock.lock();
                        let v = *g;
                        core::hint::spin_loop();
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 80_000);
    }

    #[test]
    fn statistics_count_contention_only_when_threads_compete() {
        crate::sync::platform::host::install();
        set_stats_enabled(true);
        let lock = Arc::new(SpinLock::<u64>::new("stats", 0));
        for _ in 0..1000 {
            *lock.lock() += 1;
        }
        let alone = lock.stats();
        assert_eq!(alone.acquisitions, 1000);
        assert_eq!(alone.contentions, 0, "one thread alone never contends");
        assert!(alone.hold_max >= alone.hold_min);
        lock.reset_stats();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let mut g = lock.lock();
                        *g += 1;
                        for _ in 0..50 {
                            core::hint::spin_loop();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let shared = lock.stats();
        assert_eq!(shared.acquisitions, 80_000);
        assert!(
            shared.contentions > 0,
            "4 threads hammering one lock must contend: {shared:?}"
        );
        assert!(shared.wait_total >= shared.wait_max && shared.wait_max >= shared.wait_min);
    }

    #[test]
    fn try_lock_fails_while_held() {
        let lock = IrqSpinLock::new("t", 1u8);
        let g = lock.lock();
        assert!(lock.try_lock().is_none());
        drop(g);
        assert!(lock.try_lock().is_some());
    }
}
