//! The kernel side of `vcrypt_drivers::sync`: the `Platform` that gives the shared locks, wait
//! queues and completions interrupts, preemption control and time.

use vcrypt_drivers::sync::Platform;

use crate::arch;

struct KernelPlatform;

impl Platform for KernelPlatform {
    fn irq_save(&self) -> bool {
        arch::irq_save()
    }
    fn irq_restore(&self, was_enabled: bool) {
        arch::irq_restore(was_enabled)
    }
    fn preempt_disable(&self) {}
    fn preempt_enable(&self) {}
    fn now_ns(&self) -> u64 {
        arch::tsc::now_ns()
    }
}

static PLATFORM: KernelPlatform = KernelPlatform;

/// Installs the kernel platform; call before anything takes a lock from another CPU.
pub fn init() {
    vcrypt_drivers::sync::platform::install(&PLATFORM);
}
