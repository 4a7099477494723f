//! CPU and time tests: breakpoints, timer ticks against the TSC.

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

/// The boot stack keeps at least a quarter free after boot, device bring-up and the tests so
/// far: below it are the boot page tables, which an overflow would rewrite without a fault (it
/// had 584 bytes left of 64 KiB when a lock grew by 256 bytes and the next boot faulted on the
/// local APIC's page).
pub fn boot_stack_keeps_headroom() -> TestResult {
    let (size, untouched) = arch::boot::boot_stack_headroom();
    crate::println!(
        "note: boot stack: {} KiB used of {} KiB",
        (size - untouched) / 1024,
        size / 1024
    );
    ensure!(
        untouched >= size / 4,
        "boot stack: only {untouched} of {size} bytes never used"
    );
    Ok(())
}

/// How long this CPU's timer takes per tick, in TSC nanoseconds, from the rate its current count
/// runs down at (the median of 15 clean samples), and the initial count it reloads. A host that
/// deschedules the vCPU loses ticks but cannot change that rate: a sample whose reads are not
/// tight, or which took more than half again the span it was given, is thrown away and taken
/// again. A kept sample spans at most 375 us, under one tick unless the timer runs more than
/// twice as fast as it should (then the tick count, which load cannot raise, says so first).
pub fn measured_tick_ns() -> Result<(u64, u32), String> {
    const SPAN_NS: u64 = 250_000;
    let (initial, _) = apic::timer_counts();
    ensure!(initial > 0, "the timer is not running (initial count 0)");
    let period = u64::from(initial) + 1;
    let span = tsc::ns_to_ticks(SPAN_NS);
    let mut rates = alloc::vec::Vec::new(); // counts per ms of TSC time
    let start = tsc::now_ns();
    while rates.len() < 15 {
        ensure!(
            tsc::now_ns() - start < 30_000_000_000,
            "30 s without 15 clean samples of the timer's count ({} taken)",
            rates.len()
        );
        let (a0, c0, b0) = apic::timer_count_between_tsc_reads();
        while tsc::rdtsc() - b0 < span {
            core::hint::spin_loop();
        }
        let (a1, c1, b1) = apic::timer_count_between_tsc_reads();
        let uncertainty = (b0 - a0) + (b1 - a1);
        if uncertainty * 20 > span || b1 - a0 > span * 3 / 2 {
            continue;
        }
        // The count runs down and reloads from `initial` after zero: at most one reload here.
        let counted = (u64::from(c0) + period - u64::from(c1)) % period;
        let ns = tsc::ticks_to_ns((a1 + b1) / 2 - (a0 + b0) / 2).max(1);
        rates.push(counted * 1_000_000 / ns);
    }
    rates.sort_unstable();
    let per_ms = rates[rates.len() / 2];
    ensure!(per_ms > 0, "the timer's count does not run down");
    Ok((period * 1_000_000 / per_ms, initial))
}

/// This CPU's timer ticks at TICK_HZ of TSC time: its period, measured from the rate its count
/// runs down, is 1/TICK_HZ within 10 %; ticks arrive (10 within 10 s); and no more arrive over
/// 200 ms than TICK_HZ allows, within 10 %. A host that deschedules the vCPU loses ticks, never
/// adds any, so the count only bounds from above; the measured rate is measured again where a
/// stall spoils it.
pub fn timer_ticks_agree_with_tsc() -> TestResult {
    ensure!(arch::irqs_enabled(), "interrupts are disabled");
    let first = arch::this_cpu_ticks();
    let start = tsc::now_ns();
    while arch::this_cpu_ticks() - first < 10 {
        ensure!(
            tsc::now_ns() - start < 10_000_000_000,
            "{} timer ticks in 10 s",
            arch::this_cpu_ticks() - first
        );
        // Not a halt: with a dead timer nothing might end it.
        core::hint::spin_loop();
    }
    let ticks_start = arch::this_cpu_ticks();
    let tsc_start = tsc::rdtsc();
    while tsc::ticks_to_ns(tsc::rdtsc() - tsc_start) < 200_000_000 {
        arch::enable_irqs_and_halt();
    }
    let ticks = arch::this_cpu_ticks() - ticks_start;
    let elapsed_ns = tsc::ticks_to_ns(tsc::rdtsc() - tsc_start);
    let expected = elapsed_ns * apic::TICK_HZ / 1_000_000_000;
    // One more: a tick may land on each end of the window.
    ensure!(
        ticks * 10 <= expected * 11 + 10,
        "{ticks} ticks in {} ms of TSC time, expected at most {expected} + 10 %: the timer runs fast",
        elapsed_ns / 1_000_000
    );
    let (tick_ns, initial) = measured_tick_ns()?;
    let want_ns = 1_000_000_000 / apic::TICK_HZ;
    ensure!(
        tick_ns * 10 >= want_ns * 9 && tick_ns * 10 <= want_ns * 11,
        "the timer ticks every {tick_ns} ns of TSC time ({initial} counts), expected {want_ns} ns +- 10 %"
    );
    Ok(())
}
