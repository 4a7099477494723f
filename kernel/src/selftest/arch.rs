//! CPU and time tests: breakpoints, timer ticks against the TSC.

use alloc::format;
use alloc::string::String;
use core::sync::atomic::Ordering;

use super::TestResult;
use crate::arch::{self, apic, idt, tsc};
use crate::ensure;

/// `int3` reaches the breakpoint handler once and execution continues after it.
pub fn breakpoint_is_caught_and_resumes() -> TestResult {
    let before = idt::BREAKPOINTS.load(Ordering::SeqCst);
    // SAFETY: int3 traps into our handler, which counts it and returns to the next instruction.
    unsafe { core::arch::asm!("int3") };
    let after = idt::BREAKPOINTS.load(Ordering::SeqCst);
    ensure!(
        after == before + 1,
        "breakpoint count went from {before} to {after}"
    );
    Ok(())
}

/// Over 200 ms of TSC time, this CPU's timer ticks as often as TICK_HZ says, within 10 %.
pub fn timer_ticks_agree_with_tsc() -> TestResult {
    ensure!(arch::irqs_enabled(), "interrupts are disabled");
    // A host that deschedules the vCPU loses ticks (never adds any), so a window with too few
    // is measured again; too many, or too few three times over, is a wrong calibration.
    let mut last = String::new();
    for _ in 0..3 {
        let ticks_start = arch::this_cpu_ticks();
        let tsc_start = tsc::rdtsc();
        let window_ns = 200_000_000;
        while tsc::ticks_to_ns(tsc::rdtsc() - tsc_start) < window_ns {
            arch::enable_irqs_and_halt();
        }
        let elapsed_ns = tsc::ticks_to_ns(tsc::rdtsc() - tsc_start);
        let ticks = arch::this_cpu_ticks() - ticks_start;
        let expected = elapsed_ns * apic::TICK_HZ / 1_000_000_000;
        ensure!(
            ticks * 10 <= expected * 11,
            "{ticks} ticks in {} ms of TSC time, expected {expected} +- 10 %: the timer runs fast",
            elapsed_ns / 1_000_000
        );
        if ticks * 10 >= expected * 9 {
            return Ok(());
        }
        last = format!(
            "{ticks} ticks in {} ms of TSC time, expected {expected} +- 10 % (three windows)",
            elapsed_ns / 1_000_000
        );
    }
    Err(last)
}
