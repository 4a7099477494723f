//! Tasks: a kernel thread of control with its own guarded stack, pinned to one CPU.
//!
//! States: `Runnable` (in its CPU's run queue) -> `Running` (its CPU's current task) ->
//! `Blocked` (in a wait queue or sleeping; only a wake makes it `Runnable` again) or back to
//! `Runnable` (preempted or yielded) -> `Exited` (its closure returned; the stack is freed once
//! the CPU has switched away from it).

use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Weak;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use vcrypt_drivers::sync::{SpinLock, Wake};

use crate::mm::paging::GuardedStack;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TaskState {
    Runnable = 0,
    Running = 1,
    Blocked = 2,
    Exited = 3,
}

pub struct Task {
    pub id: u64,
    pub name: String,
    /// The CPU this task runs on, for its whole life.
    pub cpu: usize,
    pub(super) state: AtomicU8,
    /// A wake arrived while the task was not (yet) blocked: its next block returns at once.
    pub(super) wake_pending: AtomicBool,
    /// Stack pointer saved by the last switch away from this task.
    pub(super) saved_rsp: UnsafeCell<u64>,
    /// `None` for tasks that run on a boot stack (the boot CPU's main task, AP idle tasks).
    pub(super) stack: Option<GuardedStack>,
    pub(super) entry: SpinLock<Option<Box<dyn FnOnce() + Send>>>,
    pub(super) me: Weak<Task>,
    /// TSC-based deadline of a timed block, 0 when none.
    pub(super) deadline_ns: AtomicU64,
}

// SAFETY: `saved_rsp` is only read or written by the CPU that owns the task, with interrupts
// disabled, during a switch; every other field is atomic, immutable or locked.
unsafe impl Sync for Task {}
// SAFETY: as above; the task owns its stack mapping.
unsafe impl Send for Task {}

impl Task {
    pub fn state(&self) -> TaskState {
        match self.state.load(Ordering::Acquire) {
            0 => TaskState::Runnable,
            1 => TaskState::Running,
            2 => TaskState::Blocked,
            _ => TaskState::Exited,
        }
    }

    pub(super) fn set_state(&self, state: TaskState) {
        self.state.store(state as u8, Ordering::SeqCst);
    }

    /// Whether `addr` is in this task's stack guard page.
    pub fn guard_page_contains(&self, addr: u64) -> bool {
        self.stack
            .as_ref()
            .is_some_and(|s| s.guard_range().contains(&addr))
    }
}

impl Wake for Task {
    fn wake(&self) {
        if let Some(task) = self.me.upgrade() {
            super::wake(&task);
        }
    }
}
