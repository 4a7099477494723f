//! `bench data`: AES-CBC throughput and latency (p50/p99) against request size (16 B .. 64 KiB,
//! 16 in flight) and against requests in flight (1, 2, 4 .. 256, at 16 B and at 4 KiB), so the
//! point where the device saturates, and the best depth for small requests, show. `sweep=size`,
//! `sweep=in_flight` or `sweep=zero_copy` runs one sweep only. Submitters keep a window of requests in flight and refill it as one
//! batch (one kick) with every request that has finished. Each row is also a share of the
//! device's own rate for its size ([`super::limit`]), measured first in the same boot.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{Cipher, Direction, Session};
use vcrypt_drivers::sync::IrqSpinLock;
use vcrypt_drivers::virtio_crypto::cipher::{CipherRequest, OwnedCipherRequest};
use vcrypt_drivers::virtio_crypto::request::RequestBatch;
use vcrypt_drivers::virtio_crypto::slots::OwnedBuffers;

use super::report::{Row, busy_text, per_second, progress, run_workers, trips_text};
use super::{BenchConfig, limit};
use crate::arch::{percpu, trips, tsc};
use crate::mm::dma::KernelHal;
use crate::println;

static SAMPLES: IrqSpinLock<Vec<u32>> = IrqSpinLock::new("bench-samples", Vec::new());
const MAX_SAMPLES_PER_WORKER: usize = 50_000;

/// A request of the bench in flight: copied into the queue's memory, or zero copy.
enum Pending {
    Copied(CipherRequest<KernelHal>),
    Owned(OwnedCipherRequest<KernelHal>),
}

impl Pending {
    fn is_done(&self) -> bool {
        match self {
            Pending::Copied(p) => p.is_done(),
            Pending::Owned(p) => p.is_done(),
        }
    }

    /// Waits; returns the output's length (and the buffers of a zero-copy request, to reuse).
    fn wait(self, pool: &mut Vec<OwnedBuffers>) -> Result<usize, String> {
        match self {
            Pending::Copied(p) => Ok(p.wait().map_err(|e| format!("{e}"))?.len()),
            Pending::Owned(p) => {
                let buffers = p.wait().map_err(|e| format!("{}", e.error))?;
                let len = buffers.dst.len();
                pool.push(buffers);
                Ok(len)
            }
        }
    }
}

fn point(
    config: &BenchConfig,
    size: usize,
    in_flight: usize,
    zero_copy: bool,
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
        // Zero copy: each request in flight has its own source and destination.
        let mut pool: Vec<OwnedBuffers> = (0..if zero_copy { window } else { 0 })
            .map(|_| OwnedBuffers {
                src: src.clone(),
                dst: vec![0; size],
            })
            .collect();
        let mut pending = VecDeque::new();
        let mut batch = RequestBatch::with_capacity(window);
        let mut posted = Vec::with_capacity(window);
        let mut samples = Vec::with_capacity(MAX_SAMPLES_PER_WORKER);
        let mut ops = 0u64;
        loop {
            // At least one request, however late the worker starts.
            let running = tsc::now_ns() < deadline || ops + pending.len() as u64 == 0;
            if running && pending.len() < window {
                while pending.len() + batch.len() < window {
                    let built = match pool.pop() {
                        Some(buffers) => device
                            .build_cipher_owned(queue, &session.as_cipher_session(), &iv, buffers)
                            .map_err(|e| e.error),
                        None => device.build_cipher_request(
                            queue,
                            &session.as_cipher_session(),
                            &iv,
                            &src,
                        ),
                    };
                    batch
                        .push(built.map_err(|e| format!("{e}"))?)
                        .map_err(|e| format!("{e}"))?;
                }
                let now = tsc::now_ns();
                batch.submit(&mut posted).map_err(|e| format!("{e}"))?;
                pending.extend(posted.drain(..).map(|r| {
                    let p = if zero_copy {
                        Pending::Owned(device.owned_request(r))
                    } else {
                        Pending::Copied(CipherRequest::from_request(r, device.health().clone()))
                    };
                    (now, p)
                }));
            }
            // Wait for the oldest, then take every other one already back: the refill is
            // then one batch.
            let Some((start, p)) = pending.pop_front() else {
                break;
            };
            let mut finished = Some((start, p));
            while let Some((start, p)) = finished.take() {
                let out_len = p.wait(&mut pool)?;
                if out_len != size {
                    return Err(format!("{out_len} bytes back for {size}"));
                }
                if samples.len() < MAX_SAMPLES_PER_WORKER {
                    samples.push(((tsc::now_ns() - start) / 1000) as u32);
                }
                ops += 1;
                if pending.front().is_some_and(|(_, p)| p.is_done()) {
                    finished = pending.pop_front();
                }
            }
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

/// Which side sets a row's rate: the device (85% of its own rate or more), the guest's CPUs
/// (busy on average 90% or more), or else the trips into QEMU, whose handling holds QEMU's
/// global lock against the device's work (docs/DESIGN.md, "The cost model: trips into QEMU").
fn limited_by(pct_of_device: u64, busy: &[u32], trips: &trips::TripCounts, ops: u64) -> String {
    let busy_avg = busy.iter().sum::<u32>() / busy.len().max(1) as u32;
    if pct_of_device >= 85 {
        String::from("device")
    } else if busy_avg >= 900 {
        String::from("guest CPU")
    } else {
        format!(
            "QEMU trips ({:.2}/req)",
            trips.total() as f64 / ops.max(1) as f64
        )
    }
}

/// The sweeps of `bench data`, the values `sweep=` takes.
pub const SWEEPS: [&str; 3] = ["size", "in_flight", "zero_copy"];

pub fn run(config: &BenchConfig) -> Result<Vec<Row>, String> {
    let sizes = [16usize, 64, 256, 1024, 4096, 16384, 65536];
    let depths = [1usize, 2, 4, 8, 16, 32, 64, 128, 256];
    // The "zero_copy" sweep repeats the larger sizes with the caller's buffers handed over.
    let points: Vec<(usize, usize, &str)> = sizes
        .iter()
        .map(|&s| (s, 16, "size"))
        .chain(
            [16, 4096]
                .iter()
                .flat_map(|&s| depths.iter().map(move |&d| (s, d, "in_flight"))),
        )
        .chain([4096, 16384, 65536].map(|s| (s, 16, "zero_copy")))
        .filter(|(_, _, sweep)| config.sweep.is_none_or(|only| only == *sweep))
        .collect();
    // The device's own rate per size, the 100% of the `%dev` column.
    let mut device_rates = Vec::new();
    let sizes: Vec<usize> = sizes
        .into_iter()
        .filter(|&s| points.iter().any(|&(size, _, _)| size == s))
        .collect();
    for (i, &size) in sizes.iter().enumerate() {
        let batch = limit::largest_batch(size);
        progress(
            "data",
            i,
            sizes.len(),
            &format!("device rate at {size} B (batches of {batch}, polled)"),
        );
        device_rates.push((
            size,
            limit::device_rate(config, size, batch, config.point_ns / 2)?,
        ));
    }
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for (i, &(size, in_flight, sweep)) in points.iter().enumerate() {
        progress(
            "data",
            i,
            points.len(),
            &format!(
                "{size} B, {in_flight} in flight{}",
                if sweep == "zero_copy" {
                    ", zero copy"
                } else {
                    ""
                }
            ),
        );
        let trips_before = trips::all_cpus();
        let zero_copy = sweep == "zero_copy";
        let (ops, busy, elapsed, p50, p99) = point(config, size, in_flight, zero_copy)?;
        let trips = trips::all_cpus().since(&trips_before);
        let ops_s = per_second(ops, elapsed);
        let mb_s = ops_s * size as u64 / 1_000_000;
        let device_rate = device_rates
            .iter()
            .find(|(s, _)| *s == size)
            .map_or(0, |(_, r)| *r);
        let pct_of_device = ops_s * 100 / device_rate.max(1);
        let limit = limited_by(pct_of_device, &busy, &trips, ops);
        // Guest CPU time (busy, every CPU) per request, and requests per guest CPU-second.
        let cpu_ns = busy.iter().map(|&b| b as u64).sum::<u64>() * elapsed / 1000;
        let cpu_ns_per_op = cpu_ns / ops.max(1);
        let ops_per_cpu_s = ops * 1_000_000_000 / cpu_ns.max(1);
        table.push(format!(
            "{sweep:<9} {size:>6} {in_flight:>9} {ops_s:>9} {pct_of_device:>5}% {mb_s:>7} {p50:>8} {p99:>8} {:>8} {:>7.1} {:>7.1}   {:<28} {limit}",
            trips_text(&trips, ops),
            trips.in_trips_ns as f64 / ops.max(1) as f64 / 1000.0,
            cpu_ns_per_op as f64 / 1000.0,
            busy_text(&busy)
        ));
        rows.push(
            Row::new("data")
                .str("sweep", sweep)
                .num("size", size)
                .num("in_flight", in_flight)
                .num("ops_per_s", ops_s)
                .num("device_ops_per_s", device_rate)
                .num("pct_of_device", pct_of_device)
                .str("limited_by", &limit)
                .num("mb_per_s", mb_s)
                .num("p50_us", p50)
                .num("p99_us", p99)
                .num("cpu_ns_per_op", cpu_ns_per_op)
                .num("ops_per_cpu_s", ops_per_cpu_s)
                .busy(&busy)
                .trips(&trips, ops)
                .num("duration_ms", elapsed / 1_000_000)
                .plot(
                    if sweep == "in_flight" {
                        "in_flight"
                    } else {
                        "size"
                    },
                    &["ops_per_s", "mb_per_s", "p50_us", "p99_us"],
                    if sweep == "in_flight" {
                        &["sweep", "size"]
                    } else {
                        &["sweep"]
                    },
                    &[],
                )
                .units(&[
                    ("size", "B"),
                    ("in_flight", "requests"),
                    ("ops_per_s", "ops/s"),
                    ("device_ops_per_s", "ops/s"),
                    ("pct_of_device", "%"),
                    ("mb_per_s", "MB/s"),
                    ("p50_us", "us"),
                    ("p99_us", "us"),
                    ("cpu_ns_per_op", "ns"),
                    ("ops_per_cpu_s", "ops/s"),
                    ("busy_pct", "%"),
                    ("busy_sum_pct", "%"),
                    ("duration_ms", "ms"),
                ])
                .emit(),
        );
    }
    println!(
        "bench data: AES-CBC throughput and latency; %dev = share of the device's own rate; per request: trip us = guest time spent in doorbell, EOI and IPI writes (waiting for QEMU), cpu us = guest CPU busy time"
    );
    for (size, rate) in &device_rates {
        println!("  device rate at {size} B: {rate} ops/s");
    }
    println!(
        "sweep       size in_flight     ops/s   %dev    MB/s  p50(us)  p99(us) trips/1k trip us  cpu us   busy per CPU (sum)           limited by"
    );
    for line in table {
        println!("{line}");
    }
    Ok(rows)
}
