//! A one-shot completion: one side delivers a value once (possibly from an interrupt handler),
//! the other sleeps until it arrives.
//!
//! Ordering: `complete` stores the value under the slot lock, then sets `done` with Release,
//! then wakes; `wait` reads `done` with Acquire before taking the value, so the value written by
//! the completer is the one the waiter sees.

use core::sync::atomic::{AtomicBool, Ordering};

use super::spinlock::IrqSpinLock;
use super::waitqueue::{TimedOut, WaitQueue};

pub struct Completion<T> {
    done: AtomicBool,
    value: IrqSpinLock<Option<T>>,
    waiters: WaitQueue,
}

impl<T> Default for Completion<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Completion<T> {
    pub const fn new() -> Self {
        Completion {
            done: AtomicBool::new(false),
            value: IrqSpinLock::new("completion", None),
            waiters: WaitQueue::new(),
        }
    }

    /// Delivers `value` and wakes the waiter. Returns the value back if the completion was
    /// already completed (a second completion is a caller bug or a duplicate from a device).
    /// Callable from interrupt context: it never allocates.
    pub fn complete(&self, value: T) -> Result<(), T> {
        {
            let mut slot = self.value.lock();
            if self.done.load(Ordering::Relaxed) {
                return Err(value);
            }
            *slot = Some(value);
            self.done.store(true, Ordering::Release);
        }
        self.waiters.wake_all();
        Ok(())
    }

    /// Whether `complete` has run.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn take(&self) -> Option<T> {
        if self.done.load(Ordering::Acquire) {
            self.value.lock().take()
        } else {
            None
        }
    }

    /// Sleeps until the value arrives and takes it. A second `wait` after the value was taken
    /// would sleep forever: one completion, one waiter.
    pub fn wait(&self) -> T {
        self.waiters.wait_until(|| self.take())
    }

    /// Like `wait`, giving up after `timeout_ns`.
    pub fn wait_timeout(&self, timeout_ns: u64) -> Result<T, TimedOut> {
        self.waiters.wait_until_timeout(|| self.take(), timeout_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::platform::host;
    use alloc::sync::Arc;

    #[test]
    fn value_crosses_threads_and_second_complete_is_refused() {
        host::install();
        let c = Arc::new(Completion::new());
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(c.complete(41u32), Ok(()));
        assert_eq!(c.complete(42), Err(42));
        assert_eq!(t.join().unwrap(), 41);
    }

    #[test]
    fn wait_timeout_expires_without_value() {
        host::install();
        let c: Completion<u8> = Completion::new();
        assert_eq!(c.wait_timeout(5_000_000), Err(TimedOut));
        c.complete(1).unwrap();
        assert_eq!(c.wait_timeout(5_000_000), Ok(1));
    }
}
