//! Synchronisation primitives the driver needs, written against a small [`Platform`] interface so
//! that the same code runs in the kernel (interrupts, TSC, scheduler) and in host unit tests
//! (threads).
//!
//! Lock rules (enforced by the types where possible):
//! - [`IrqSpinLock`] disables local interrupts while held: use it for everything an interrupt
//!   handler touches. Its guard is `!Send`, and restores the interrupt state it found, so
//!   nesting is safe.
//! - [`SpinLock`] only disables preemption: for data that interrupt handlers never touch.
//! - Nothing may sleep while holding either (the guard's lifetime makes a sleep under it visible).

pub mod completion;
pub mod platform;
pub mod spinlock;
pub mod waitqueue;

pub use completion::Completion;
pub use platform::{Platform, Wake};
pub use spinlock::{IrqSpinLock, IrqsOff, LockStatSnapshot, PreemptOff, SpinGuard, SpinLock};
pub use waitqueue::{TimedOut, WaitQueue};
