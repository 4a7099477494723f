//! The hooks the sync primitives need from whatever runs them. The kernel installs its
//! implementation once at boot; without one (host unit tests) the hooks are no-ops and time
//! comes from a monotonic counter supplied by the test platform, if any.

use spin::Once;

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
}

static PLATFORM: Once<&'static dyn Platform> = Once::new();

/// Installs the platform. Only the first call has an effect.
pub fn install(platform: &'static dyn Platform) {
    PLATFORM.call_once(|| platform);
}

/// The installed platform, or the no-op one.
pub fn get() -> &'static dyn Platform {
    match PLATFORM.get() {
        Some(platform) => *platform,
        None => &NoPlatform,
    }
}
