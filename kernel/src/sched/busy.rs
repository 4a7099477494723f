//! CPU busy % over a window, from the idle task's halted time (TSC).

use alloc::vec::Vec;

use crate::arch::{percpu, tsc};

/// A window start: `finish` gives busy per mille per CPU since then.
pub struct BusyWindow {
    start_ns: u64,
    idle_start: Vec<u64>,
}

impl BusyWindow {
    pub fn start() -> BusyWindow {
        let idle_start = (0..percpu::cpu_count()).map(super::idle_ns).collect();
        BusyWindow {
            start_ns: tsc::now_ns(),
            idle_start,
        }
    }

    /// Busy time per CPU in tenths of a percent (0..=1000) since `start`.
    pub fn busy_permille(&self) -> Vec<u32> {
        let elapsed = tsc::now_ns().saturating_sub(self.start_ns).max(1);
        self.idle_start
            .iter()
            .enumerate()
            .map(|(cpu, &idle0)| {
                let idle = super::idle_ns(cpu).saturating_sub(idle0).min(elapsed);
                (1000 - idle * 1000 / elapsed) as u32
            })
            .collect()
    }
}

/// Formats per mille as a percentage with one decimal (`37.5%`).
pub struct Percent(pub u32);

impl core::fmt::Display for Percent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}%", self.0 / 10, self.0 % 10)
    }
}
