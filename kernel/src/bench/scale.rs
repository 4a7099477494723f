//! `bench scale`: the experiment of "DM-CRYPT: Scale to multiple CPUs" (Andi Kleen, 2010): per-CPU
//! crypto queues. For 1, 2 and
//! 4 submitting CPUs (as many as the boot has), `queues=shared` (every CPU on device 0, queue
//! 0) against `queues=percpu` (each CPU on the device and queue whose interrupt it takes), with
//! AES-CBC at 16 B and 4 KiB and a fixed number of requests in flight per CPU: ops/s, busy per
//! CPU, ops per guest CPU-second, queue-lock contentions and wait, cross-CPU wake-ups and IPIs
//! per 1,000 requests.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{Cipher, Direction};
use vcrypt_drivers::service::QueueMode;
use vcrypt_drivers::sync::spinlock::{set_stats_enabled, stats_enabled};
use vcrypt_drivers::sync::{IrqSpinLock, LockStatSnapshot};

use super::BenchConfig;
use super::report::{Row, busy_text, per_second, progress, run_workers};
use crate::arch::{percpu, trips, tsc};
use crate::println;
use crate::sched;
use crate::virtio::crypto::{devices, service};

/// Requests each submitting CPU keeps in flight.
const IN_FLIGHT_PER_CPU: usize = 8;

/// Remote wake-ups and IPIs seen by the workers on their own CPUs while they ran (spawning and
/// joining the workers are not part of it).
static WORKER_COUNTS: IrqSpinLock<(u64, u64)> = IrqSpinLock::new("bench-scale", (0, 0));

fn data_queue_locks() -> LockStatSnapshot {
    let mut lock = LockStatSnapshot::default();
    for queue in devices().iter().flat_map(|d| d.data.iter()) {
        lock.merge(&queue.lock_stats());
    }
    lock
}

pub fn run(config: &BenchConfig) -> Result<Vec<Row>, String> {
    let service = service().ok_or("no crypto service")?;
    let original = service.queue_mode();
    let cpus = percpu::cpu_count();
    let queues: usize = devices().iter().map(|d| d.data.len()).sum();
    println!(
        "bench scale: {} device(s), {queues} data queue(s), {cpus} CPUs, {IN_FLIGHT_PER_CPU} requests in flight per submitting CPU",
        devices().len()
    );
    let submitters: Vec<usize> = [1usize, 2, 4].into_iter().filter(|&n| n <= cpus).collect();
    let sizes = [16usize, 4096];
    let modes = [QueueMode::Shared, QueueMode::PerCpu];
    let total = submitters.len() * sizes.len() * modes.len();
    let mut rows = Vec::new();
    let mut table = Vec::new();
    let mut index = 0;
    for &size in &sizes {
        for &n in &submitters {
            for &mode in &modes {
                progress(
                    "scale",
                    index,
                    total,
                    &format!("{size} B, {n} CPU(s), queues={}", mode.name()),
                );
                index += 1;
                service.set_queue_mode(mode);
                let session = Arc::new(
                    service
                        .open(Cipher::AesCbc, Direction::Encrypt, &[0x44u8; 16])
                        .map_err(|e| format!("open: {e}"))?,
                );
                // Sessions are created before the clock starts: the point measures data only.
                session
                    .open_everywhere()
                    .map_err(|e| format!("open everywhere: {e}"))?;
                for queue in devices().iter().flat_map(|d| d.data.iter()) {
                    queue.reset_lock_stats();
                }
                let stats_were_enabled = stats_enabled();
                set_stats_enabled(true);
                *WORKER_COUNTS.lock() = (0, 0);
                let trips_before = trips::all_cpus();
                let worker_session = session.clone();
                let result = run_workers(n, config.point_ns, move |_, deadline| {
                    let cpu = percpu::cpu_index();
                    let (wakes_before, ipis_before) =
                        (sched::remote_wakes(cpu), trips::of_cpu(cpu).ipis);
                    let src = vec![0x5au8; size];
                    let mut pending = VecDeque::with_capacity(IN_FLIGHT_PER_CPU);
                    let mut ops = 0u64;
                    let mut started = Vec::with_capacity(IN_FLIGHT_PER_CPU);
                    loop {
                        let running = tsc::now_ns() < deadline || ops + pending.len() as u64 == 0;
                        if running && pending.len() < IN_FLIGHT_PER_CPU {
                            // Refill the window as one batch (one kick).
                            let room = IN_FLIGHT_PER_CPU - pending.len();
                            worker_session
                                .start_batch(
                                    (0..room).map(|_| (&[0u8; 16][..], &src[..])),
                                    &mut started,
                                )
                                .map_err(|e| format!("{e}"))?;
                            pending.extend(started.drain(..));
                        }
                        // The oldest, then every other one already back.
                        let Some(request) = pending.pop_front() else {
                            break;
                        };
                        request.wait().map_err(|e| format!("{e}"))?;
                        ops += 1;
                        while pending.front().is_some_and(|r| r.is_done()) {
                            if let Some(request) = pending.pop_front() {
                                request.wait().map_err(|e| format!("{e}"))?;
                                ops += 1;
                            }
                        }
                    }
                    let mut counts = WORKER_COUNTS.lock();
                    counts.0 += sched::remote_wakes(cpu) - wakes_before;
                    counts.1 += trips::of_cpu(cpu).ipis - ipis_before;
                    Ok(ops)
                });
                set_stats_enabled(stats_were_enabled);
                service.set_queue_mode(original);
                let (ops, busy, elapsed) = result?;
                let (remote_wakes, ipis) = *WORKER_COUNTS.lock();
                let trips = trips::all_cpus().since(&trips_before);
                let lock = data_queue_locks();
                drop(session);
                let ops_s = per_second(ops, elapsed);
                let busy_sum: u64 = busy.iter().map(|&b| b as u64).sum();
                // ops per second of guest CPU time: busy is in per mille of one CPU.
                let ops_per_cpu_s = ops_s * 1000 / busy_sum.max(1);
                let per_1k = |x: u64| format!("{:.1}", x as f64 * 1000.0 / ops.max(1) as f64);
                table.push(format!(
                    "{size:>6} {n:>5} {:<7} {ops_s:>8} {ops_per_cpu_s:>11} {:>11} {:>13.1} {:>13} {:>9}   {}",
                    mode.name(),
                    lock.contentions,
                    lock.wait_total as f64 / 1000.0,
                    per_1k(remote_wakes),
                    per_1k(ipis),
                    busy_text(&busy)
                ));
                rows.push(
                    Row::new("scale")
                        .str("queues", mode.name())
                        .num("size", size)
                        .num("cpus", n)
                        .num("devices", devices().len())
                        .num("data_queues", queues)
                        .num("in_flight_per_cpu", IN_FLIGHT_PER_CPU)
                        .num("ops_per_s", ops_s)
                        .num("ops_per_cpu_s", ops_per_cpu_s)
                        .busy(&busy)
                        .num("lock_contentions", lock.contentions)
                        .num("lock_wait_total_ns", lock.wait_total)
                        .num("remote_wakes_per_1k", per_1k(remote_wakes))
                        .num("ipis_per_1k", per_1k(ipis))
                        .trips(&trips, ops)
                        .num("duration_ms", elapsed / 1_000_000)
                        .plot(
                            "cpus",
                            &["ops_per_s", "ops_per_cpu_s", "lock_contentions"],
                            &["queues", "size"],
                            &[],
                        )
                        .units(&[
                            ("size", "B"),
                            ("cpus", "CPUs"),
                            ("ops_per_s", "ops/s"),
                            ("ops_per_cpu_s", "ops/CPU-s"),
                            ("busy_pct", "%"),
                            ("busy_sum_pct", "%"),
                            ("lock_contentions", "count"),
                            ("lock_wait_total_ns", "ns"),
                            ("remote_wakes_per_1k", "per 1k requests"),
                            ("ipis_per_1k", "per 1k requests"),
                            ("duration_ms", "ms"),
                        ])
                        .emit(),
                );
            }
        }
    }
    println!("bench scale: AES-CBC, queues=shared (device 0 queue 0) vs queues=percpu");
    println!(
        "  size  cpus queues     ops/s  ops/CPU-s contentions wait total us remote wake/1k  IPI/1k   busy per CPU (sum)"
    );
    for line in table {
        println!("{line}");
    }
    println!(
        "DM-CRYPT: Scale to multiple CPUs (2010): one shared queue and worker cannot keep up with many submitting CPUs; \
         per-CPU queues remove the lock contention and the cross-CPU completions. Here QEMU runs every \
         device's requests in one main-loop thread on a 2-core host, so total ops/s is bounded by it; \
         the per-CPU gain shows as zero contentions and remote wake-ups and more ops per guest CPU-second."
    );
    Ok(rows)
}
