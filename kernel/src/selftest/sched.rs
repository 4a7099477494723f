//! Scheduler tests: placement, preemption, busy accounting, stack overflow.

use alloc::format;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use alloc::sync::Arc;

use super::TestResult;
use crate::arch::{percpu, tsc};
use crate::ensure;
use crate::sched::{self, busy::BusyWindow};

const JOIN_TIMEOUT_NS: u64 = 10_000_000_000;

/// A task spawned on each CPU runs there.
pub fn tasks_run_on_every_cpu() -> TestResult {
    let cpus = percpu::cpu_count();
    let handles: Vec<_> = (0..cpus)
        .map(|cpu| sched::spawn("where-am-i", Some(cpu), percpu::cpu_index))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("spawn: {e:?}"))?;
    for (cpu, handle) in handles.into_iter().enumerate() {
        let ran_on = handle
            .join_timeout(JOIN_TIMEOUT_NS)
            .map_err(|_| format!("task for CPU {cpu} never finished"))?;
        ensure!(
            ran_on == cpu,
            "task spawned on CPU {cpu} ran on CPU {ran_on}"
        );
    }
    ensure!(
        sched::spawn("nowhere", Some(percpu::MAX_CPUS), || ()).is_err(),
        "spawn on a CPU that does not exist succeeded"
    );
    Ok(())
}

/// A task that spins does not keep another task on the same CPU from running: the timer
/// preempts it. The spinner spins until the other task has run (at most 10 s: without
/// preemption the other runs only after it).
pub fn spinning_task_does_not_starve_another() -> TestResult {
    let cpu = percpu::cpu_count() - 1;
    let spinning = Arc::new(AtomicBool::new(true));
    let other_ran = Arc::new(AtomicBool::new(false));
    let (spinning2, other_ran2) = (spinning.clone(), other_ran.clone());
    let spinner = sched::spawn("spinner", Some(cpu), move || {
        let end = tsc::now_ns() + 10_000_000_000;
        while !other_ran2.load(Ordering::SeqCst) && tsc::now_ns() < end {
            core::hint::spin_loop();
        }
        spinning2.store(false, Ordering::SeqCst);
    })
    .map_err(|e| format!("{e:?}"))?;
    let other = sched::spawn("other", Some(cpu), move || {
        let during_spin = spinning.load(Ordering::SeqCst);
        other_ran.store(true, Ordering::SeqCst);
        during_spin
    })
    .map_err(|e| format!("{e:?}"))?;
    let other_ran_during_spin = other
        .join_timeout(2 * JOIN_TIMEOUT_NS)
        .map_err(|_| "second task never ran")?;
    spinner
        .join_timeout(2 * JOIN_TIMEOUT_NS)
        .map_err(|_| "spinner never finished")?;
    ensure!(
        other_ran_during_spin,
        "the second task only ran after the spinner finished"
    );
    Ok(())
}

/// Busy % is low while every CPU idles and near 100 on a CPU that spins. Idle: under half over
/// 200 ms (a host that stalls the vCPU outside its halt adds some; idle time counted as busy
/// gives 100 %). Spinning: over 90 % in a window that lies wholly inside the spin (the CPU never
/// halts there, however slow the host).
pub fn busy_percent_idle_and_spinning() -> TestResult {
    let window = BusyWindow::start();
    sched::sleep_ns(200_000_000);
    let idle = window.busy_permille();
    for (cpu, &busy) in idle.iter().enumerate() {
        ensure!(
            busy < 500,
            "CPU {cpu} was {busy} per mille busy while idle: {idle:?}"
        );
    }
    let cpu = percpu::cpu_count() - 1;
    let started = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let (started2, stop2) = (started.clone(), stop.clone());
    let spinner = sched::spawn("spin", Some(cpu), move || {
        started2.store(true, Ordering::SeqCst);
        let end = tsc::now_ns() + JOIN_TIMEOUT_NS;
        while !stop2.load(Ordering::SeqCst) && tsc::now_ns() < end {
            core::hint::spin_loop();
        }
        // Whether the window ended before the spin did.
        stop2.load(Ordering::SeqCst)
    })
    .map_err(|e| format!("{e:?}"))?;
    while !started.load(Ordering::SeqCst) {
        sched::sleep_ns(1_000_000);
    }
    let window = BusyWindow::start();
    sched::sleep_ns(200_000_000);
    let spun = window.busy_permille();
    stop.store(true, Ordering::SeqCst);
    let still_spinning = spinner
        .join_timeout(JOIN_TIMEOUT_NS)
        .map_err(|_| "spinner never finished")?;
    ensure!(
        still_spinning,
        "the spinner stopped within the window (after 10 s)"
    );
    ensure!(
        spun[cpu] > 900,
        "CPU {cpu} was only {} per mille busy while spinning: {spun:?}",
        spun[cpu]
    );
    Ok(())
}

/// Sleeping takes at least the time asked for, and yields the CPU meanwhile.
pub fn sleep_waits_and_yields() -> TestResult {
    let cpu = percpu::cpu_index();
    let counter = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (c2, s2) = (counter.clone(), stop.clone());
    let worker = sched::spawn("counter", Some(cpu), move || {
        while !s2.load(Ordering::SeqCst) {
            c2.fetch_add(1, Ordering::Relaxed);
            sched::yield_now();
        }
    })
    .map_err(|e| format!("{e:?}"))?;
    let start = tsc::now_ns();
    sched::sleep_ns(50_000_000);
    let slept = tsc::now_ns() - start;
    stop.store(true, Ordering::SeqCst);
    worker
        .join_timeout(JOIN_TIMEOUT_NS)
        .map_err(|_| "counter task never finished")?;
    ensure!(slept >= 50_000_000, "slept {slept} ns, asked for 50 ms");
    ensure!(
        counter.load(Ordering::Relaxed) > 0,
        "a task on the same CPU never ran while we slept"
    );
    Ok(())
}

#[allow(unconditional_recursion)] // it is meant to run off the end of its stack
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 64];
    core::hint::black_box(&frame);
    recurse(depth + 1) + frame[3]
}

/// Exists only to fail: a task overflowing its stack must be reported by name.
pub fn stack_overflow_must_fail() -> TestResult {
    let handle = sched::spawn("overflow", None, || recurse(0)).map_err(|e| format!("{e:?}"))?;
    let _ = handle.join_timeout(JOIN_TIMEOUT_NS);
    Err(alloc::string::String::from(
        "the overflowing task was not reported",
    ))
}
