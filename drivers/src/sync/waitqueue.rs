//! Wait queues: tasks sleep until a condition holds; wakers (tasks or interrupt handlers) make
//! it hold and wake them.
//!
//! Memory-ordering contract: a waker makes the condition true with a Release store (or under a
//! lock) *before* calling `wake_one`/`wake_all`; the condition closure reads it with Acquire (or
//! under the same lock). `wait_until` enqueues the waiter, then re-checks the condition, then
//! blocks: a wake that happens between the check and the block finds the waiter queued and
//! marks it woken, and the platform remembers a wake that arrives before the block, so no wake-up
//! is lost. Wakers never allocate: `wake_*` only pop from the queue, which makes them safe in
//! interrupt context. Waiting allocates one small waiter record per sleep (task context only).

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};

use super::platform::{self, Wake};
use super::spinlock::IrqSpinLock;

struct Waiter {
    task: Arc<dyn Wake>,
    woken: AtomicBool,
}

/// The timed wait ran out before the condition held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// A queue of sleeping tasks.
pub struct WaitQueue {
    waiters: IrqSpinLock<VecDeque<Arc<Waiter>>>,
    /// How many are queued (changed under the lock): a wake finds an empty queue without
    /// taking the lock, which under TCG costs about 0.3 us (it enables interrupts again), and
    /// every released request slot and every drain wakes.
    queued: AtomicUsize,
}

impl Default for WaitQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl WaitQueue {
    pub const fn new() -> Self {
        WaitQueue {
            waiters: IrqSpinLock::new("waitqueue", VecDeque::new()),
            queued: AtomicUsize::new(0),
        }
    }

    /// Sleeps until `condition` returns `Some`, and returns that value.
    pub fn wait_until<T>(&self, mut condition: impl FnMut() -> Option<T>) -> T {
        match self.wait_inner(&mut condition, None) {
            Ok(value) => value,
            Err(TimedOut) => unreachable!("a wait without a deadline cannot time out"),
        }
    }

    /// Like `wait_until`, but gives up when the platform clock passes `deadline_ns`.
    pub fn wait_until_deadline<T>(
        &self,
        mut condition: impl FnMut() -> Option<T>,
        deadline_ns: u64,
    ) -> Result<T, TimedOut> {
        self.wait_inner(&mut condition, Some(deadline_ns))
    }

    /// Like `wait_until`, but gives up after `timeout_ns`.
    pub fn wait_until_timeout<T>(
        &self,
        condition: impl FnMut() -> Option<T>,
        timeout_ns: u64,
    ) -> Result<T, TimedOut> {
        let deadline = platform::get().now_ns().saturating_add(timeout_ns);
        self.wait_until_deadline(condition, deadline)
    }

    fn wait_inner<T>(
        &self,
        condition: &mut dyn FnMut() -> Option<T>,
        deadline_ns: Option<u64>,
    ) -> Result<T, TimedOut> {
        if let Some(value) = condition() {
            return Ok(value);
        }
        let platform = platform::get();
        loop {
            let waiter = Arc::new(Waiter {
                task: platform.current_task(),
                woken: AtomicBool::new(false),
            });
            {
                let mut waiters = self.waiters.lock();
                waiters.push_back(waiter.clone());
                self.queued.store(waiters.len(), Ordering::Relaxed);
            }
            // Re-check after enqueueing: a waker that made the condition true before we were
            // queued did not see us. The fence pairs with the one in `wake_one`: either the
            // waker sees this waiter counted, or this check sees what the waker changed before
            // it looked (a store then a load on each side, which only full fences keep in
            // order).
            fence(Ordering::SeqCst);
            if let Some(value) = condition() {
                self.remove(&waiter);
                return Ok(value);
            }
            while !waiter.woken.load(Ordering::Acquire) {
                if deadline_ns.is_some_and(|d| platform.now_ns() >= d) {
                    self.remove(&waiter);
                    // One last look: the condition may have become true as time ran out.
                    return condition().ok_or(TimedOut);
                }
                platform.block(deadline_ns);
            }
            if let Some(value) = condition() {
                return Ok(value);
            }
        }
    }

    fn remove(&self, waiter: &Arc<Waiter>) {
        let mut waiters = self.waiters.lock();
        waiters.retain(|w| !Arc::ptr_eq(w, waiter));
        self.queued.store(waiters.len(), Ordering::Relaxed);
    }

    /// Wakes the longest-waiting task. Returns whether there was one. Callable from interrupt
    /// context.
    pub fn wake_one(&self) -> bool {
        // The caller changed the condition before calling: see the fence in `wait_inner`.
        fence(Ordering::SeqCst);
        if self.queued.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let waiter = {
            let mut waiters = self.waiters.lock();
            let waiter = waiters.pop_front();
            self.queued.store(waiters.len(), Ordering::Relaxed);
            waiter
        };
        match waiter {
            Some(waiter) => {
                waiter.woken.store(true, Ordering::Release);
                waiter.task.wake();
                true
            }
            None => false,
        }
    }

    /// Wakes every waiting task; returns how many. Callable from interrupt context.
    pub fn wake_all(&self) -> usize {
        let mut woken = 0;
        // Pop one at a time so the lock is never held while a task is woken.
        while self.wake_one() {
            woken += 1;
        }
        woken
    }

    /// Number of tasks waiting.
    pub fn len(&self) -> usize {
        self.waiters.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::platform::host;
    use core::sync::atomic::AtomicU32;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn ping_pong_loses_no_wakeup() {
        host::install();
        let turn = Arc::new(AtomicU32::new(0));
        let wq = Arc::new(WaitQueue::new());
        const ROUNDS: u32 = 20_000;
        let (t2, w2) = (turn.clone(), wq.clone());
        let other = thread::spawn(move || {
            for i in 0..ROUNDS {
                w2.wait_until(|| (t2.load(Ordering::Acquire) == 2 * i + 1).then_some(()));
                t2.store(2 * i + 2, Ordering::Release);
                w2.wake_all();
            }
        });
        for i in 0..ROUNDS {
            turn.store(2 * i + 1, Ordering::Release);
            wq.wake_all();
            wq.wait_until(|| (turn.load(Ordering::Acquire) == 2 * i + 2).then_some(()));
        }
        other.join().unwrap();
        assert_eq!(turn.load(Ordering::Acquire), 2 * ROUNDS);
    }

    #[test]
    fn timed_wait_times_out_and_leaves_no_waiter() {
        host::install();
        let wq = WaitQueue::new();
        let start = std::time::Instant::now();
        let r: Result<(), _> = wq.wait_until_timeout(|| None, 20_000_000);
        assert_eq!(r, Err(TimedOut));
        assert!(start.elapsed() >= Duration::from_millis(20));
        assert!(wq.is_empty());
    }

    #[test]
    fn condition_true_at_deadline_is_returned() {
        host::install();
        let wq = WaitQueue::new();
        assert_eq!(wq.wait_until_timeout(|| Some(7), 0), Ok(7));
    }

    #[test]
    fn wake_one_wakes_exactly_one_of_many() {
        host::install();
        let wq = Arc::new(WaitQueue::new());
        let tokens = Arc::new(AtomicU32::new(0));
        let done = Arc::new(AtomicU32::new(0));
        let threads: std::vec::Vec<_> = (0..4)
            .map(|_| {
                let (wq, tokens, done) = (wq.clone(), tokens.clone(), done.clone());
                thread::spawn(move || {
                    wq.wait_until(|| {
                        tokens
                            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1))
                            .ok()
                    });
                    done.fetch_add(1, Ordering::AcqRel);
                })
            })
            .collect();
        while wq.len() < 4 {
            thread::yield_now();
        }
        tokens.fetch_add(1, Ordering::AcqRel);
        assert!(wq.wake_one());
        thread::sleep(Duration::from_millis(50));
        assert_eq!(
            done.load(Ordering::Acquire),
            1,
            "one token must release exactly one waiter"
        );
        tokens.fetch_add(3, Ordering::AcqRel);
        wq.wake_all();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(Ordering::Acquire), 4);
    }
}
