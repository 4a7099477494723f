//! The hooks the sync primitives need from whatever runs them: interrupt and preemption control,
//! time, and tasks that block and are woken. The kernel installs its implementation once at
//! boot; host unit tests install one built on threads (`host` below).

use alloc::sync::Arc;

use spin::Once;

/// A task that can be woken. Waking a task that is not blocked makes its next block return at
/// once (the wake is remembered), so a wake that races with going to sleep is never lost.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// What the sync primitives need from the CPU and the scheduler.
pub trait Platform: Sync {
    /// Disables local interrupts and returns whether they were enabled before.
    fn irq_save(&self) -> bool;
    /// Re-enables local interrupts if `was_enabled`.
    fn irq_restore(&self, was_enabled: bool);
    /// Stops the scheduler from switching away from the current task (nests).
    fn preempt_disable(&self);
    /// Undoes one `preempt_disable`.
    fn preempt_enable(&self);
    /// Monotonic time in nanoseconds.
    fn now_ns(&self) -> u64;
    /// Index of the CPU running the caller.
    fn current_cpu(&self) -> usize;
    /// The running task, to be woken later.
    fn current_task(&self) -> Arc<dyn Wake>;
    /// Blocks the running task until it is woken or, with a deadline, until `now_ns()` passes it.
    /// May return early (spuriously); callers re-check their condition.
    fn block(&self, deadline_ns: Option<u64>);
}

struct NoPlatform;

impl Platform for NoPlatform {
    fn irq_save(&self) -> bool {
        false
    }
    fn irq_restore(&self, _was_enabled: bool) {}
    fn preempt_disable(&self) {}
    fn preempt_enable(&self) {}
    fn now_ns(&self) -> u64 {
        0
    }
    fn current_cpu(&self) -> usize {
        0
    }
    fn current_task(&self) -> Arc<dyn Wake> {
        struct Nobody;
        impl Wake for Nobody {
            fn wake(&self) {}
        }
        Arc::new(Nobody)
    }
    fn block(&self, _deadline_ns: Option<u64>) {
        core::hint::spin_loop();
    }
}

static PLATFORM: Once<&'static dyn Platform> = Once::new();

/// Installs the platform. Only the first call has an effect.
pub fn install(platform: &'static dyn Platform) {
    PLATFORM.call_once(|| platform);
}

/// The installed platform, or a no-op one that spins instead of blocking.
pub fn get() -> &'static dyn Platform {
    match PLATFORM.get() {
        Some(platform) => *platform,
        None => &NoPlatform,
    }
}

/// A platform of OS threads for host unit tests: blocking is `park`, waking is `unpark`.
#[cfg(test)]
pub mod host {
    use super::*;
    use std::thread::{self, Thread};
    use std::time::{Duration, Instant};

    struct HostTask(Thread);

    std::thread_local! {
        /// Preemption-off depth of this thread: blocking with it above 0 panics, as the
        /// kernel's scheduler does.
        static PREEMPT_OFF: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
        /// "Local interrupts" of this thread, as the kernel's `IrqSpinLock` and interrupt
        /// handlers see them: off inside an `IrqSpinLock` guard or a simulated handler.
        static IRQS_ENABLED: core::cell::Cell<bool> = const { core::cell::Cell::new(true) };
    }

    impl Wake for HostTask {
        fn wake(&self) {
            self.0.unpark();
        }
    }

    struct HostPlatform {
        start: Instant,
    }

    impl Platform for HostPlatform {
        fn irq_save(&self) -> bool {
            IRQS_ENABLED.with(|e| e.replace(false))
        }
        fn irq_restore(&self, was_enabled: bool) {
            if was_enabled {
                IRQS_ENABLED.with(|e| e.set(true));
            }
        }
        fn preempt_disable(&self) {
            PREEMPT_OFF.with(|d| d.set(d.get() + 1));
        }
        fn preempt_enable(&self) {
            PREEMPT_OFF.with(|d| d.set(d.get().saturating_sub(1)));
        }
        fn now_ns(&self) -> u64 {
            self.start.elapsed().as_nanos() as u64
        }
        fn current_cpu(&self) -> usize {
            0
        }
        fn current_task(&self) -> Arc<dyn Wake> {
            Arc::new(HostTask(thread::current()))
        }
        fn block(&self, deadline_ns: Option<u64>) {
            assert_eq!(
                PREEMPT_OFF.with(|d| d.get()),
                0,
                "block() with preemption disabled (a sleep under a preemption-off lock)"
            );
            assert!(
                IRQS_ENABLED.with(|e| e.get()),
                "block() with interrupts disabled (a sleep in interrupt context or under an IrqSpinLock)"
            );
            match deadline_ns {
                None => thread::park(),
                Some(deadline) => {
                    let now = self.now_ns();
                    if deadline > now {
                        thread::park_timeout(Duration::from_nanos(deadline - now));
                    }
                }
            }
        }
    }

    /// Installs the thread platform (once per test binary).
    pub fn install() {
        static HOST: Once<HostPlatform> = Once::new();
        super::install(HOST.call_once(|| HostPlatform {
            start: Instant::now(),
        }));
    }
}
