//! `bench ctrl`: session create+destroy pairs per second, busy-polled under one control lock
//! (`ctrl=poll`, depth 1: what "virtio-crypto: wait ctrl queue instead of busy polling"
//! replaced) vs sleeping on a completion with many in
//! flight (`ctrl=sleep`), with 1 worker, one per CPU and 8 per CPU; then `batch`: each worker
//! creates 16 sessions with one kick and destroys them with another (the control path's batch
//! API). Per row: ops/s and its share of the control queue's own rate measured first in the
//! same boot (`bench limit`'s control probe: batches of 64, polled), busy % per CPU and their
//! sum, trips, and the destroy-session latency as a log2 histogram in microseconds (for
//! `batch`, of a whole batch of destroys).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{Cipher, Direction};
use vcrypt_drivers::stats::Log2Histogram;
use vcrypt_drivers::virtio_crypto::device::CtrlMode;

use super::report::{Row, busy_text, per_second, progress, run_workers, trips_text};
use super::{BenchConfig, limit};
use crate::arch::{percpu, trips, tsc};
use crate::println;

/// Sessions per kick in the `batch` rows (fewer with many workers).
const BATCH: usize = 16;
/// Sessions all `batch` workers hold at once, at most (the device holds 256).
const SESSIONS_IN_BATCHES: usize = 128;

pub fn run(config: &BenchConfig) -> Result<Vec<Row>, String> {
    let device = config.device;
    let cpus = percpu::cpu_count();
    let worker_counts = [1, cpus, 8 * cpus];
    // (mode, name, sessions per kick)
    let modes = [
        (CtrlMode::Poll, "poll", 1),
        (CtrlMode::Sleep, "sleep", 1),
        (CtrlMode::Sleep, "batch", BATCH),
    ];
    let total = worker_counts.len() * modes.len();
    progress(
        "ctrl",
        0,
        total,
        &format!(
            "the control queue's own rate (batches of {}, polled)",
            limit::CONTROL_RATE_BATCH
        ),
    );
    let (device_rate, _) =
        limit::control_rate(config, limit::CONTROL_RATE_BATCH, config.point_ns / 2)?;
    let original = device.ctrl_mode();
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for (m, (mode, name, batch)) in modes.into_iter().enumerate() {
        for (w, workers) in worker_counts.into_iter().enumerate() {
            // The device holds 256 sessions: all workers' batches together stay at 128.
            let per_kick = batch.min(SESSIONS_IN_BATCHES / workers).max(1);
            progress(
                "ctrl",
                m * worker_counts.len() + w,
                total,
                &format!("ctrl={name}, {workers} workers"),
            );
            device.set_ctrl_mode(mode);
            let histogram = Arc::new(Log2Histogram::new());
            let hist = histogram.clone();
            let trips_before = trips::all_cpus();
            let result = run_workers(workers, config.point_ns, move |_, deadline| {
                let key = [0x11u8; 16];
                let mut pairs = 0;
                // At least one pair, however late the worker starts: a point never reports nothing.
                let keys = [&key[..]; BATCH];
                let keys = &keys[..per_kick];
                while pairs == 0 || tsc::now_ns() < deadline {
                    if per_kick == 1 {
                        let id = device
                            .create_cipher_session(Cipher::AesCbc, Direction::Encrypt, &key)
                            .map_err(|e| format!("create: {e}"))?
                            .id;
                        let start = tsc::now_ns();
                        device
                            .destroy_cipher_session(id)
                            .map_err(|e| format!("destroy: {e}"))?;
                        hist.record((tsc::now_ns() - start) / 1000);
                        pairs += 1;
                        continue;
                    }
                    let ids = device
                        .create_cipher_sessions(Cipher::AesCbc, Direction::Encrypt, keys)
                        .into_iter()
                        .map(|created| created.map(|s| s.id))
                        .collect::<Result<Vec<u64>, _>>()
                        .map_err(|e| format!("create: {e}"))?;
                    let start = tsc::now_ns();
                    device
                        .destroy_cipher_sessions(&ids)
                        .into_iter()
                        .collect::<Result<Vec<()>, _>>()
                        .map_err(|e| format!("destroy: {e}"))?;
                    hist.record((tsc::now_ns() - start) / 1000);
                    pairs += ids.len() as u64;
                }
                Ok(pairs)
            });
            device.set_ctrl_mode(original);
            let (pairs, busy, elapsed) = result?;
            let trips = trips::all_cpus().since(&trips_before);
            let ops = per_second(pairs, elapsed);
            let pct_of_device = ops * 100 / device_rate.max(1);
            table.push(format!(
                "{name:<6} {workers:>7} {per_kick:>8} {ops:>10} {pct_of_device:>4}% {:>8}   {}",
                trips_text(&trips, pairs),
                busy_text(&busy)
            ));
            println!("destroy-session latency, ctrl={name}, {workers} workers:\n{histogram}");
            rows.push(
                Row::new("ctrl")
                    .str("mode", name)
                    .num("workers", workers)
                    .num("sessions_per_kick", per_kick)
                    .num("pairs", pairs)
                    .num("ops_per_s", ops)
                    .num("device_ops_per_s", device_rate)
                    .num("pct_of_device", pct_of_device)
                    .busy(&busy)
                    .trips(&trips, pairs)
                    .nums("destroy_latency_log2_us", &histogram.counts())
                    .num("destroy_p50_us_le", histogram.percentile_upper_bound(50))
                    .num("destroy_p99_us_le", histogram.percentile_upper_bound(99))
                    .num("duration_ms", elapsed / 1_000_000)
                    .plot(
                        "workers",
                        &["ops_per_s", "destroy_p50_us_le", "destroy_p99_us_le"],
                        &["mode"],
                        &["destroy_latency_log2_us"],
                    )
                    .units(&[
                        ("workers", "tasks"),
                        ("sessions_per_kick", "sessions"),
                        ("pairs", "pairs"),
                        ("ops_per_s", "pairs/s"),
                        ("device_ops_per_s", "pairs/s"),
                        ("pct_of_device", "%"),
                        ("busy_pct", "%"),
                        ("busy_sum_pct", "%"),
                        ("destroy_latency_log2_us", "us"),
                        ("destroy_p50_us_le", "us"),
                        ("destroy_p99_us_le", "us"),
                        ("duration_ms", "ms"),
                    ])
                    .emit(),
            );
        }
    }
    println!(
        "bench ctrl: session create+destroy pairs per second; %dev = share of the control queue's own rate ({device_rate} pairs/s)"
    );
    println!("mode   workers per kick      ops/s  %dev trips/1k   busy per CPU (sum)");
    for line in table {
        println!("{line}");
    }
    Ok(rows)
}
