//! The kernel side of `vcrypt_drivers::sync`: the `Platform` that gives the shared locks, wait
//! queues and completions interrupts, preemption control and time.

use alloc::sync::Arc;

use vcrypt_drivers::sync::{Platform, Wake};

use crate::{arch, sched};

struct KernelPlatform;

impl Platform for KernelPlatform {
    fn irq_save(&self) -> bool {
        arch::irq_save()
    }
    fn irq_restore(&self, was_enabled: bool) {
        arch::irq_restore(was_enabled)
    }
    fn preempt_disable(&self) {
        sched::preempt_disable()
    }
    fn preempt_enable(&self) {
        sched::preempt_enable()
    }
    fn now_ns(&self) -> u64 {
        arch::tsc::now_ns()
    }
    fn current_cpu(&self) -> usize {
        arch::percpu::cpu_index()
    }
    fn current_task(&self) -> Arc<dyn Wake> {
        sched::current()
    }
    fn block(&self, deadline_ns: Option<u64>) {
        sched::block(deadline_ns)
    }
}

static PLATFORM: KernelPlatform = KernelPlatform;

/// Installs the kernel platform; call before anything takes a lock from another CPU.
pub fn init() {
    vcrypt_drivers::sync::platform::install(&PLATFORM);
}
