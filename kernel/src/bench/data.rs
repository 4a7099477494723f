//! `bench data`: AES-CBC throughput and latency (p50/p99) against request size (16 B .. 64 KiB,
//! 16 in flight) and against requests in flight (1, 2, 4 .. 256, 4 KiB), so the point where the
//! device saturates shows. Submitters keep a sliding window of requests in flight.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{Cipher, Direction, Session};
use vcrypt_drivers::sync::IrqSpinLock;

use super::BenchConfig;
use super::report::{Row, busy_text, per_second, progress, run_workers, trips_text};
use crate::arch::{percpu, trips, tsc};
use crate::println;

static SAMPLES: IrqSpinLock<Vec<u32>> = IrqSpinLock::new("bench-samples", Vec::new());
const MAX_SAMPLES_PER_WORKER: usize = 50_000;

fn point(
    config: &BenchConfig,
    size: usize,
    in_flight: usize,
) -> Result<(u64, Vec<u32>, u64, u64, u64), String> {
    let device = config.device;
    let workers = in_flight.min(percpu::cpu_count());
    let window = in_flight / workers;
    SAMPLES.lock().clear();
    let (ops, busy, elapsed) = run_workers(workers, config.point_ns, move |_, deadline| {
        let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &[0x33u8; 16])
            .map_err(|e| format!("{e}"))?;
        let queue = device.data_queue_for(percpu::cpu_index());
        let src = vec![0xa5u8; size];
        let iv = [0u8; 16];
        let mut pending = VecDeque::new();
        let mut samples = Vec::with_capacity(MAX_SAMPLES_PER_WORKER);
        let mut ops = 0u64;
        loop {
            // At least one request, however late the worker starts.
            let running = tsc::now_ns() < deadline || ops + pending.len() as u64 == 0;
            if running && pending.len() < window {
                let p = device
                    .start_cipher_request(
                        queue,
                        session.id(),
                        Cipher::AesCbc,
                        Direction::Encrypt,
                        &iv,
                        &src,
                    )
                    .map_err(|e| format!("{e}"))?;
                pending.push_back((tsc::now_ns(), p));
                continue;
            }
            let Some((start, p)) = pending.pop_front() else {
                break;
            };
            let out = p.wait().map_err(|e| format!("{e}"))?;
            let out_len = out.len();
            drop(out);
            if out_len != size {
                return Err(format!("{out_len} bytes back for {size}"));
            }
            if samples.len() < MAX_SAMPLES_PER_WORKER {
                samples.push(((tsc::now_ns() - start) / 1000) as u32);
            }
            ops += 1;
        }
        SAMPLES.lock().extend_from_slice(&samples);
        Ok(ops)
    })?;
    let mut samples = core::mem::take(&mut *SAMPLES.lock());
    samples.sort_unstable();
    let pct = |p: usize| {
        samples
            .get((samples.len() * p / 100).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as u64
    };
    Ok((ops, busy, elapsed, pct(50), pct(99)))
}

pub fn run(config: &BenchConfig) -> Result<Vec<Row>, String> {
    let sizes = [16usize, 64, 256, 1024, 4096, 16384, 65536];
    let depths = [1usize, 2, 4, 8, 16, 32, 64, 128, 256];
    let points: Vec<(usize, usize, &str)> = sizes
        .iter()
        .map(|&s| (s, 16, "size"))
        .chain(depths.iter().map(|&d| (4096, d, "in_flight")))
        .collect();
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for (i, &(size, in_flight, sweep)) in points.iter().enumerate() {
        progress(
            "data",
            i,
            points.len(),
            &format!("{size} B, {in_flight} in flight"),
        );
        let trips_before = trips::all_cpus();
        let (ops, busy, elapsed, p50, p99) = point(config, size, in_flight)?;
        let trips = trips::all_cpus().since(&trips_before);
        let ops_s = per_second(ops, elapsed);
        let mb_s = ops_s * size as u64 / 1_000_000;
        table.push(format!(
            "{sweep:<9} {size:>6} {in_flight:>9} {ops_s:>9} {mb_s:>7} {p50:>8} {p99:>8} {:>8}   {}",
            trips_text(&trips, ops),
            busy_text(&busy)
        ));
        rows.push(
            Row::new("data")
                .str("sweep", sweep)
                .num("size", size)
                .num("in_flight", in_flight)
                .num("ops_per_s", ops_s)
                .num("mb_per_s", mb_s)
                .num("p50_us", p50)
                .num("p99_us", p99)
                .busy(&busy)
                .trips(&trips, ops)
                .num("duration_ms", elapsed / 1_000_000)
                .plot(
                    sweep,
                    &["ops_per_s", "mb_per_s", "p50_us", "p99_us"],
                    &[],
                    &[],
                )
                .units(&[
                    ("size", "B"),
                    ("in_flight", "requests"),
                    ("ops_per_s", "ops/s"),
                    ("mb_per_s", "MB/s"),
                    ("p50_us", "us"),
                    ("p99_us", "us"),
                    ("busy_pct", "%"),
                    ("busy_sum_pct", "%"),
                    ("duration_ms", "ms"),
                ])
                .emit(),
        );
    }
    println!("bench data: AES-CBC throughput and latency");
    println!(
        "sweep       size in_flight     ops/s    MB/s  p50(us)  p99(us) trips/1k   busy per CPU (sum)"
    );
    for line in table {
        println!("{line}");
    }
    Ok(rows)
}
