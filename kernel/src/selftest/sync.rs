//! Sync tests: wait queues across CPUs, wake from interrupts, timed waits, lock statistics.

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vcrypt_drivers::sync::spinlock::{set_stats_enabled, stats_enabled};
use vcrypt_drivers::sync::{IrqSpinLock, TimedOut, WaitQueue};

use super::TestResult;
use crate::arch::irq::IrqLine;
use crate::arch::{apic, percpu, tsc};
use crate::ensure;
use crate::sched::{self, TaskState};

/// A timed wait that lasted this long was ended by its timeout, not by a wake-up: the timed
/// wait re-checks its condition at the timeout, so a lost wake-up shows only as a wait this
/// long (a wake-up, however late a stalled vCPU takes it, ends the wait sooner).
const STEP_TIMEOUT_NS: u64 = 10_000_000_000;

/// 10,000 round trips between two tasks on different CPUs (the same one with 1 CPU) through one
/// wait queue. A lost wake-up would end at the timeout with the condition true (the timed wait
/// re-checks it), so every step is also timed: one that lasted its whole timeout fails.
pub fn ping_pong_10000_across_cpus() -> TestResult {
    const ROUNDS: u64 = 10_000;
    let turn = Arc::new(AtomicU64::new(0));
    let wq = Arc::new(WaitQueue::new());
    let (t2, w2) = (turn.clone(), wq.clone());
    let other_cpu = percpu::cpu_count() - 1;
    let pong = sched::spawn("pong", Some(other_cpu), move || -> Result<(), u64> {
        for i in 0..ROUNDS {
            let start = tsc::now_ns();
            w2.wait_until_timeout(
                || (t2.load(Ordering::Acquire) == 2 * i + 1).then_some(()),
                STEP_TIMEOUT_NS,
            )
            .map_err(|_| i)?;
            if tsc::now_ns() - start >= STEP_TIMEOUT_NS {
                return Err(i);
            }
            t2.store(2 * i + 2, Ordering::Release);
            w2.wake_all();
        }
        Ok(())
    })
    .map_err(|e| format!("{e:?}"))?;
    let ping = sched::spawn("ping", Some(0), move || -> Result<(), u64> {
        for i in 0..ROUNDS {
            turn.store(2 * i + 1, Ordering::Release);
            wq.wake_all();
            let start = tsc::now_ns();
            wq.wait_until_timeout(
                || (turn.load(Ordering::Acquire) == 2 * i + 2).then_some(()),
                STEP_TIMEOUT_NS,
            )
            .map_err(|_| i)?;
            if tsc::now_ns() - start >= STEP_TIMEOUT_NS {
                return Err(i);
            }
        }
        Ok(())
    })
    .map_err(|e| format!("{e:?}"))?;
    let ping = ping.join();
    let pong = pong.join();
    ensure!(
        ping.is_ok(),
        "ping lost a wake-up in round {}",
        ping.unwrap_err()
    );
    ensure!(
        pong.is_ok(),
        "pong lost a wake-up in round {}",
        pong.unwrap_err()
    );
    Ok(())
}

static IRQ_WAKE_QUEUE: WaitQueue = WaitQueue::new();
static IRQ_WAKE_FLAG: AtomicBool = AtomicBool::new(false);

/// A task asleep on a wait queue is woken by an interrupt handler (an IPI to its CPU).
pub fn wake_from_interrupt_resumes_sleeper() -> TestResult {
    let line = IrqLine::alloc().map_err(|e| format!("{e}"))?;
    line.on_active(|| {
        IRQ_WAKE_FLAG.store(true, Ordering::Release);
        IRQ_WAKE_QUEUE.wake_all();
    });
    IRQ_WAKE_FLAG.store(false, Ordering::SeqCst);
    let cpu = percpu::cpu_count() - 1;
    let sleeper = sched::spawn("irq-sleeper", Some(cpu), || {
        let start = tsc::now_ns();
        let woken = IRQ_WAKE_QUEUE.wait_until_timeout(
            || IRQ_WAKE_FLAG.load(Ordering::Acquire).then_some(()),
            STEP_TIMEOUT_NS,
        );
        (woken, tsc::now_ns() - start)
    })
    .map_err(|e| format!("{e:?}"))?;
    let start = tsc::now_ns();
    while sleeper.task().state() != TaskState::Blocked || IRQ_WAKE_QUEUE.is_empty() {
        ensure!(
            tsc::now_ns() - start < STEP_TIMEOUT_NS,
            "the sleeper never went to sleep"
        );
        sched::sleep_ns(1_000_000);
    }
    apic::send_ipi(percpu::apic_id_of(cpu), line.vector());
    let (result, waited_ns) = sleeper
        .join_timeout(STEP_TIMEOUT_NS * 2)
        .map_err(|_| "sleeper never finished")?;
    drop(line);
    // The timed wait re-checks its condition at the timeout, so a lost wake-up would still end
    // with the flag set: only a wait as long as the timeout tells the timeout from the wake-up.
    ensure!(
        result.is_ok() && waited_ns < STEP_TIMEOUT_NS,
        "the sleeper waited {} ms, its whole timeout: the wake-up was lost",
        waited_ns / 1_000_000
    );
    Ok(())
}

/// A timed wait whose condition never holds returns TimedOut no earlier than asked and not
/// grossly later: within twice the timeout and a second (a stalled vCPU returns late; a timeout
/// in the wrong unit or several times too long does not pass at 500 ms).
pub fn timed_wait_times_out_in_window() -> TestResult {
    let wq = WaitQueue::new();
    for timeout_ms in [10u64, 500] {
        let start = tsc::now_ns();
        let result: Result<(), TimedOut> = wq.wait_until_timeout(|| None, timeout_ms * 1_000_000);
        let waited_ms = (tsc::now_ns() - start) / 1_000_000;
        ensure!(
            result == Err(TimedOut),
            "a condition that never holds returned {result:?}"
        );
        ensure!(
            waited_ms >= timeout_ms && waited_ms <= 2 * timeout_ms + 1_000,
            "a {timeout_ms} ms timed wait took {waited_ms} ms"
        );
        ensure!(wq.is_empty(), "the timed-out waiter is still queued");
    }
    Ok(())
}

static HAMMERED: IrqSpinLock<u64> = IrqSpinLock::new("hammered", 0);

fn hammer(
    tasks: usize,
    spread_over_cpus: bool,
) -> Result<vcrypt_drivers::sync::spinlock::LockStatSnapshot, alloc::string::String> {
    const ITERATIONS: u64 = 20_000;
    HAMMERED.reset_stats();
    *HAMMERED.lock() = 0;
    HAMMERED.reset_stats();
    // Restored at the end: the command line may have switched statistics on for the whole run.
    let stats_were_enabled = stats_enabled();
    set_stats_enabled(true);
    let handles: Vec<_> = (0..tasks)
        .map(|i| {
            let cpu = if spread_over_cpus {
                i % percpu::cpu_count()
            } else {
                0
            };
            sched::spawn("hammer", Some(cpu), || {
                for _ in 0..ITERATIONS {
                    let mut value = HAMMERED.lock();
                    *value += 1;
                    for _ in 0..20 {
                        core::hint::spin_loop();
                    }
                }
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| {
            set_stats_enabled(stats_were_enabled);
            format!("{e:?}")
        })?;
    let finished = handles
        .into_iter()
        .all(|h| h.join_timeout(STEP_TIMEOUT_NS * 4).is_ok());
    set_stats_enabled(stats_were_enabled);
    ensure!(finished, "a hammer task never finished");
    let stats = HAMMERED.stats();
    let total = *HAMMERED.lock();
    ensure!(
        total == tasks as u64 * ITERATIONS,
        "lost updates: {total} of {}",
        tasks as u64 * ITERATIONS
    );
    ensure!(
        stats.acquisitions == tasks as u64 * ITERATIONS,
        "{} acquisitions counted",
        stats.acquisitions
    );
    Ok(stats)
}

/// Four tasks on one CPU never contend (a held IrqSpinLock cannot be preempted); one task per
/// CPU on several CPUs does, and the statistics say so.
pub fn lock_stats_show_contention_only_across_cpus() -> TestResult {
    let one_cpu = hammer(4, false)?;
    ensure!(
        one_cpu.contentions == 0,
        "tasks on one CPU contended: {one_cpu:?}"
    );
    ensure!(
        one_cpu.hold_max >= one_cpu.hold_min && one_cpu.hold_total > 0,
        "hold times missing: {one_cpu:?}"
    );
    if percpu::cpu_count() >= 2 {
        let spread = hammer(percpu::cpu_count().min(4), true)?;
        ensure!(
            spread.contentions > 0,
            "{} CPUs hammering one lock never contended: {spread:?}",
            percpu::cpu_count()
        );
        ensure!(
            spread.wait_total >= spread.wait_max && spread.wait_max > 0,
            "wait times missing: {spread:?}"
        );
    }
    Ok(())
}
