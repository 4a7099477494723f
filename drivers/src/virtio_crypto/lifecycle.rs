//! A device's lifecycle: the state every submitter checks (in memory: no register read per
//! request), the generation that ties sessions to one incarnation of the device, and the hook
//! that wakes the recovery task.
//!
//! ```text
//!            request_recovery()                 begin_recovery()
//!  Running ---------------------> NeedsReset ---------------------> Resetting
//!     ^   (config interrupt saw        |  (recovery task)               |  reset read back 0,
//!     |    NEEDS_RESET, a timeout      |                                |  in-flight failed,
//!     |    found it, a bad used id)    |                                |  queues rebuilt
//!     +--------------------------------------------------------------- + finish(): generation+1
//!                                                     any step fails -> Failed (terminal)
//! ```
//!
//! Who moves it: any context may call [`Lifecycle::request_recovery`] (it flips an atomic, then
//! closes every queue of the device and calls the hook; neither may allocate or sleep); only the
//! recovery task (task context, `CryptoDevice::recover`) moves it further. Whoever notices a
//! broken device (a queue's drain, a timeout, the configuration interrupt) asks here, so every
//! queue of the device closes whichever noticed. A request made while a recovery runs is
//! remembered, and another recovery follows this one: the device may have broken again after
//! it was reset.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use spin::Once;

use super::queue::QueueOwner;
use crate::error::Error;

/// Where a device is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DeviceState {
    /// Accepting requests.
    Running = 0,
    /// Found broken (NEEDS_RESET or a protocol violation); the recovery task was asked to reset
    /// it. New requests are refused with `DeviceReset`; requests in flight wait for the reset.
    NeedsReset = 1,
    /// The recovery task is resetting it.
    Resetting = 2,
    /// A reset or the re-initialisation failed: every request gets `DeviceNeedsReset`.
    Failed = 3,
}

impl DeviceState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => DeviceState::Running,
            1 => DeviceState::NeedsReset,
            2 => DeviceState::Resetting,
            _ => DeviceState::Failed,
        }
    }
}

/// A device's state, generation and recovery hook.
pub struct Lifecycle {
    state: AtomicU8,
    generation: AtomicU64,
    /// Completed resets.
    pub resets: AtomicU64,
    /// Times recovery was asked for (each transition out of Running).
    pub recovery_requests: AtomicU64,
    hook: Once<Box<dyn Fn() + Send + Sync>>,
    /// Closes every queue of the device (set by the device when it is assembled).
    close_queues: Once<Box<dyn Fn() + Send + Sync>>,
    /// Recovery was asked for while one was running.
    again: AtomicBool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

impl Lifecycle {
    pub const fn new() -> Self {
        Lifecycle {
            state: AtomicU8::new(DeviceState::Running as u8),
            generation: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            recovery_requests: AtomicU64::new(0),
            hook: Once::new(),
            close_queues: Once::new(),
            again: AtomicBool::new(false),
        }
    }

    pub fn state(&self) -> DeviceState {
        DeviceState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Incremented by every completed reset; sessions remember the one they were made in.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Sets what `request_recovery` calls (once): it wakes the device's recovery task. It may
    /// run in interrupt context: no allocation, no sleeping.
    pub fn set_recovery_hook(&self, hook: Box<dyn Fn() + Send + Sync>) {
        self.hook.call_once(|| hook);
    }

    /// Sets what closes every queue of the device (once). Any context may call it: no
    /// allocation, no sleeping.
    pub fn set_queue_closer(&self, close: Box<dyn Fn() + Send + Sync>) {
        self.close_queues.call_once(|| close);
    }

    /// Running -> NeedsReset, then closes every queue and calls the hook. Returns whether this
    /// call made the transition (later calls while recovery is pending do nothing; one while a
    /// recovery runs is remembered for after it). Any context.
    pub fn request_recovery(&self) -> bool {
        let moved = self
            .state
            .compare_exchange(
                DeviceState::Running as u8,
                DeviceState::NeedsReset as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if moved {
            self.recovery_requests.fetch_add(1, Ordering::Relaxed);
            if let Some(close) = self.close_queues.get() {
                close();
            }
            if let Some(hook) = self.hook.get() {
                hook();
            }
        } else if self.state() == DeviceState::Resetting {
            self.again.store(true, Ordering::Release);
        }
        moved
    }

    /// The error a new request gets, if the device does not take requests now.
    pub fn check_open(&self) -> Result<(), Error> {
        match self.state() {
            DeviceState::Running => Ok(()),
            DeviceState::NeedsReset | DeviceState::Resetting => Err(Error::DeviceReset),
            DeviceState::Failed => Err(Error::DeviceNeedsReset),
        }
    }

    pub(crate) fn set(&self, state: DeviceState) {
        if state == DeviceState::Resetting {
            // This recovery covers whatever was noticed before it started.
            self.again.store(false, Ordering::Release);
        }
        self.state.store(state as u8, Ordering::Release);
    }

    /// A reset completed: a new generation (before the queues reopen, so that a request bound
    /// to the old one is refused once they do).
    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The device is back: Running; then, if recovery was asked for while this one ran, it is
    /// asked for again (checked after the state changed, so no request falls in between).
    pub(crate) fn finish(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
        self.set(DeviceState::Running);
        if self.again.swap(false, Ordering::AcqRel) {
            self.request_recovery();
        }
    }
}

impl QueueOwner for Lifecycle {
    fn check_open(&self) -> Result<(), Error> {
        Lifecycle::check_open(self)
    }

    fn generation(&self) -> u64 {
        Lifecycle::generation(self)
    }

    fn request_recovery(&self) {
        Lifecycle::request_recovery(self);
    }
}
