//! Interrupt lines: owned vectors, several handlers per line, the scheduler's reschedule IPI
//! still reaching it after everything else ran, and completions on the submitting CPU.

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use vcrypt_drivers::crypto::{Cipher, Direction, Session};

use super::TestResult;
use crate::arch::irq::{self, IrqError, IrqLine, vectors};
use crate::arch::{apic, percpu, trips, tsc};
use crate::ensure;
use crate::sched;

/// How long an interrupt or a task is waited for: a stalled vCPU takes it late, a lost one never.
const WAIT_NS: u64 = 10_000_000_000;

/// Spins until `done` holds or `WAIT_NS` has passed; returns whether it held.
fn wait_for(done: impl Fn() -> bool) -> bool {
    let start = tsc::now_ns();
    while !done() {
        if tsc::now_ns() - start > WAIT_NS {
            return false;
        }
        core::hint::spin_loop();
    }
    true
}

/// A vector has one owner: the kernel's fixed vectors and an allocated one are refused to a
/// second claimant, exceptions are refused, and a dropped line's vector can be had again.
pub fn occupied_vector_is_refused() -> TestResult {
    for fixed in [vectors::TIMER, vectors::RESCHEDULE, vectors::SPURIOUS] {
        let claim = IrqLine::claim(fixed);
        ensure!(
            claim.as_ref().err() == Some(&IrqError::Occupied { vector: fixed }),
            "claiming the kernel's vector {fixed:#x} was not refused: {:?}",
            claim.map(|l| l.vector())
        );
    }
    ensure!(
        IrqLine::claim(14).err() == Some(IrqError::Exception { vector: 14 }),
        "an exception vector was handed out"
    );
    let line = IrqLine::alloc().map_err(|e| format!("{e}"))?;
    let vector = line.vector();
    ensure!(
        irq::DEVICE_VECTORS.contains(&vector),
        "allocated vector {vector:#x} is outside the device range"
    );
    ensure!(
        IrqLine::claim(vector).err() == Some(IrqError::Occupied { vector }),
        "an allocated vector was handed out twice"
    );
    let other = IrqLine::alloc().map_err(|e| format!("{e}"))?;
    ensure!(other.vector() != vector, "alloc returned a vector in use");
    drop(line);
    let again = IrqLine::claim(vector).map_err(|e| format!("after the drop: {e}"))?;
    ensure!(again.vector() == vector, "claimed the wrong vector");
    Ok(())
}

/// Every handler of a line runs on each interrupt (a shared INTx line relies on it), a removed
/// one no longer does, and the line counts what it took.
pub fn every_handler_of_a_line_runs() -> TestResult {
    let hits: Arc<[AtomicU32; 2]> = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
    let line = IrqLine::alloc().map_err(|e| format!("{e}"))?;
    let ids: Vec<_> = (0..2)
        .map(|i| {
            let hits = hits.clone();
            line.on_active(move || {
                hits[i].fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    let me = percpu::apic_id_of(percpu::cpu_index());
    apic::send_ipi(me, line.vector());
    ensure!(
        wait_for(|| hits.iter().all(|h| h.load(Ordering::SeqCst) == 1)),
        "after one interrupt the handlers ran {:?} times, expected [1, 1]",
        hits.iter()
            .map(|h| h.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    );
    line.remove(ids[0]);
    apic::send_ipi(me, line.vector());
    ensure!(
        wait_for(|| hits[1].load(Ordering::SeqCst) == 2),
        "the remaining handler did not run on the second interrupt"
    );
    ensure!(
        hits[0].load(Ordering::SeqCst) == 1,
        "a removed handler still ran"
    );
    ensure!(
        line.interrupts_taken() == 2,
        "the line counted {} interrupts, expected 2",
        line.interrupts_taken()
    );
    Ok(())
}

/// With two devices and enough queues, every CPU has a device whose queue interrupts it, and the
/// completions of requests a CPU submits there wake its task without any cross-CPU wake-up.
pub fn completions_wake_on_the_submitting_cpu() -> TestResult {
    let devices = crate::virtio::crypto::devices();
    ensure!(!devices.is_empty(), "no virtio-crypto device");
    let cpus = percpu::cpu_count();
    let per_queue_vectors = crate::virtio::crypto::functions()
        .iter()
        .all(|f| f.mode == crate::virtio::crypto::InterruptMode::PerQueueVectors);
    let total_queues: usize = devices.iter().map(|d| d.data.len()).sum();
    let mut checked = 0;
    for cpu in 0..cpus {
        let home = devices
            .iter()
            .find(|d| d.routing().is_some_and(|r| r.is_local(cpu)));
        let Some(&device) = home else {
            ensure!(
                !per_queue_vectors || total_queues < cpus,
                "CPU {cpu} has no device queue of its own although there are {total_queues} queues for {cpus} CPUs"
            );
            continue;
        };
        let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &[7u8; 16])
            .map_err(|e| format!("session: {e}"))?;
        let session = Arc::new(session);
        let worker = sched::spawn("local-completions", Some(cpu), {
            let session = session.clone();
            move || -> Result<u64, alloc::string::String> {
                let before = sched::remote_wakes(cpu);
                let src = [0x5au8; 64];
                let mut dst = [0u8; 64];
                for i in 0..500u32 {
                    let mut iv = [0u8; 16];
                    iv[..4].copy_from_slice(&i.to_le_bytes());
                    session
                        .encrypt(&iv, &src, &mut dst)
                        .map_err(|e| format!("request {i}: {e}"))?;
                }
                Ok(sched::remote_wakes(cpu) - before)
            }
        })
        .map_err(|e| format!("{e:?}"))?;
        let remote = worker
            .join_timeout(30 * WAIT_NS)
            .map_err(|_| format!("the worker on CPU {cpu} did not finish"))??;
        ensure!(
            remote == 0,
            "500 requests from CPU {cpu} on {}: {remote} wake-ups came from another CPU",
            device.name
        );
        checked += 1;
    }
    ensure!(checked > 0, "no CPU has a queue of its own on any device");
    Ok(())
}

/// Runs last: after every other test, reschedule IPIs still reach the scheduler on every CPU
/// (counted by its handler), remote wakes of a halted CPU come with one, and no interrupt arrived
/// on a vector without a handler during the whole run.
pub fn reschedule_ipis_still_reach_the_scheduler() -> TestResult {
    let me = percpu::cpu_index();
    for cpu in 0..percpu::cpu_count() {
        let before = sched::resched_ipis(cpu);
        apic::send_ipi(percpu::apic_id_of(cpu), vectors::RESCHEDULE);
        ensure!(
            wait_for(|| sched::resched_ipis(cpu) > before),
            "a reschedule IPI sent to CPU {cpu} did not reach the scheduler"
        );
        if cpu == me {
            continue;
        }
        // Spawning onto a halted CPU must wake it with an IPI, not wait for its next tick. The
        // CPU may wake on its own (a tick) between the check and the spawn, and then needs no
        // IPI: up to 20 attempts, one of which must find it still halted.
        let mut woken_by_ipi = false;
        for _ in 0..20 {
            ensure!(
                wait_for(|| sched::is_halted(cpu)),
                "CPU {cpu} never went idle"
            );
            let before = sched::resched_ipis(cpu);
            let task =
                sched::spawn("wake-halted", Some(cpu), || ()).map_err(|e| format!("{e:?}"))?;
            task.join_timeout(WAIT_NS)
                .map_err(|_| format!("a task spawned on halted CPU {cpu} did not run"))?;
            if sched::resched_ipis(cpu) > before {
                woken_by_ipi = true;
                break;
            }
        }
        ensure!(
            woken_by_ipi,
            "waking halted CPU {cpu} took no reschedule IPI in 20 attempts"
        );
    }
    ensure!(
        irq::unexpected_interrupts() == 0,
        "{} interrupts arrived on vectors without a handler",
        irq::unexpected_interrupts()
    );
    Ok(())
}

/// Waking many tasks of a halted CPU costs one reschedule IPI, not one per task: the IPI on
/// its way makes the CPU look at its whole run queue. 16 tasks blocked on another CPU are woken
/// in one burst with interrupts off here. The CPU may wake and halt again during the burst (a
/// host that deschedules this vCPU mid-burst lets it), and each new halt rightly gets its own
/// IPI; so the bound is two IPIs per halt the burst saw (a waker that read "halted" just before
/// the CPU woke may send a second). Without the pending-IPI check a burst sent 16.
pub fn wakes_of_a_halted_cpu_share_one_ipi() -> TestResult {
    use core::sync::atomic::AtomicBool;
    const TASKS: usize = 16;
    if percpu::cpu_count() < 2 {
        return super::not_applicable("one CPU: no other CPU to wake".into());
    }
    let me = percpu::cpu_index();
    let target = (me + 1) % percpu::cpu_count();
    let go = Arc::new(AtomicBool::new(false));
    let parked: Arc<spin::Mutex<Vec<Arc<sched::Task>>>> = Arc::default();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (go, parked) = (go.clone(), parked.clone());
            sched::spawn("ipi-burst", Some(target), move || {
                parked.lock().push(sched::current());
                while !go.load(Ordering::SeqCst) {
                    sched::block(None);
                }
            })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{e:?}"))?;
    ensure!(
        wait_for(|| parked.lock().len() == TASKS && sched::is_halted(target)),
        "the {TASKS} tasks never all blocked on CPU {target} with it halted"
    );
    let before = trips::of_cpu(me).ipis;
    go.store(true, Ordering::SeqCst);
    let was = crate::arch::irq_save();
    let halts_before = sched::halts(target);
    for task in parked.lock().iter() {
        sched::wake(task);
    }
    let new_halts = sched::halts(target) - halts_before;
    crate::arch::irq_restore(was);
    let sent = trips::of_cpu(me).ipis - before;
    for task in tasks {
        task.join_timeout(WAIT_NS)
            .map_err(|_| format!("a woken task on CPU {target} did not finish"))?;
    }
    ensure!(
        sent <= 2 * (1 + new_halts),
        "{sent} IPIs for {TASKS} wakes of CPU {target}, which began {new_halts} new halts meanwhile"
    );
    Ok(())
}

/// Whatever interrupt mode each device got (per-queue vectors, one shared vector, INTx), its
/// completions arrive as interrupts on its own lines, and INTx is unmasked exactly when it is
/// the mode.
pub fn every_device_takes_interrupts_in_its_mode() -> TestResult {
    use crate::virtio::crypto::InterruptMode;
    let functions = crate::virtio::crypto::functions();
    ensure!(!functions.is_empty(), "no virtio-crypto device");
    for function in functions {
        let device = function.device;
        ensure!(
            function.pci.intx_enabled() == (function.mode == InterruptMode::Intx),
            "{}: mode {:?} but INTx is {} in the command register",
            device.name,
            function.mode,
            if function.pci.intx_enabled() {
                "enabled"
            } else {
                "masked"
            }
        );
        if function.mode == InterruptMode::Polled {
            continue;
        }
        let before = function.interrupts_taken();
        let trips_before = trips::all_cpus();
        let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &[9u8; 16])
            .map_err(|e| format!("{}: session: {e}", device.name))?;
        let mut dst = [0u8; 32];
        session
            .encrypt(&[0u8; 16], &[1u8; 32], &mut dst)
            .map_err(|e| format!("{}: {e}", device.name))?;
        drop(session);
        ensure!(
            function.interrupts_taken() >= before + 2,
            "{} ({:?}, vectors {:x?}): {} interrupts for a session create, a request and a destroy",
            device.name,
            function.mode,
            function.vectors(),
            function.interrupts_taken() - before
        );
        // The trip counters saw the same: a doorbell per request, and each interrupt taken
        // and acknowledged (INTx and MSI-X alike). The handler wakes the task before its CPU
        // sends the EOI, so the last EOI may still be on its way: looked at for up to a second.
        let deadline = crate::arch::tsc::now_ns() + 1_000_000_000;
        let counted = |t: &trips::TripCounts| t.doorbells >= 3 && t.interrupts >= 3 && t.eois >= 3;
        let mut trips = trips::all_cpus().since(&trips_before);
        while !counted(&trips) && crate::arch::tsc::now_ns() < deadline {
            crate::sched::yield_now();
            trips = trips::all_cpus().since(&trips_before);
        }
        ensure!(
            counted(&trips),
            "{}: create + request + destroy counted {trips:?}",
            device.name
        );
    }
    Ok(())
}
