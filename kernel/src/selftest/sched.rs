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

fn spin_for_ns(ns: u64) {
    let end = tsc::now_ns() + ns;
    while tsc::now_ns() < end {
        core::hint::spin_loop();
    }
}

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

/// A task that spins for 300 ms does not keep another task on the same CPU from running: the
/// timer preempts it.
pub fn spinning_task_does_not_starve_another() -> TestResult {
    let cpu = percpu::cpu_count() - 1;
    let spinning = Arc::new(AtomicBool::new(true));
    let spinning2 = spinning.clone();
    let spinner = sched::spawn("spinner", Some(cpu), move || {
        spin_for_ns(300_000_000);
        spinning2.store(false, Ordering::SeqCst);
    })
    .map_err(|e| format!("{e:?}"))?;
    let spinning3 = spinning.clone();
    let other = sched::spawn("other", Some(cpu), move || spinning3.load(Ordering::SeqCst))
        .map_err(|e| format!("{e:?}"))?;
    let other_ran_during_spin = other
        .join_timeout(JOIN_TIMEOUT_NS)
        .map_err(|_| "second task never ran")?;
    spinner
        .join_timeout(JOIN_TIMEOUT_NS)
        .map_err(|_| "spinner never finished")?;
    ensure!(
        other_ran_during_spin,
        "the second task only ran after the spinner finished"
    );
    Ok(())
}

/// Busy % is near 0 while every CPU idles and near 100 on a CPU that spins.
pub fn busy_percent_idle_and_spinning() -> TestResult {
    let window = BusyWindow::start();
    sched::sleep_ns(200_000_000);
    let idle = window.busy_permille();
    for (cpu, &busy) in idle.iter().enumerate() {
        ensure!(
            busy < 100,
            "CPU {cpu} was {busy} per mille busy while idle: {idle:?}"
        );
    }
    let cpu = percpu::cpu_count() - 1;
    let window = BusyWindow::start();
    sched::spawn("spin", Some(cpu), || spin_for_ns(200_000_000))
        .map_err(|e| format!("{e:?}"))?
        .join_timeout(JOIN_TIMEOUT_NS)
        .map_err(|_| "spinner never finished")?;
    let spun = window.busy_permille();
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
