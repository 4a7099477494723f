//! `bench limit`: the device's own rate, the ceiling the other data numbers are compared with
//! (kept as the yardstick every data row is measured against). Batches of AES-CBC requests are added to one queue
//! with a single kick; the queue is handed to a poller (the device is asked for no interrupts)
//! and polled until the last request is back. What counts is the time from the submission to
//! the last completion: the device working with nothing in its way.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use vcrypt_drivers::crypto::{Cipher, Direction, Session};
use vcrypt_drivers::virtio_crypto::cipher::CipherRequest;
use vcrypt_drivers::virtio_crypto::request::{Request, RequestBatch};

use super::BenchConfig;
use super::report::{Row, progress, run_workers};
use crate::arch::{percpu, trips, tsc};
use crate::println;

/// Request sizes and batch sizes of `bench limit`.
const SIZES: [usize; 3] = [16, 4096, 65536];
const BATCHES: [usize; 4] = [1, 8, 64, 200];

/// The largest batch for `size`: a 64 KiB request takes one of the queue's 16 large blocks
/// (more spill to the heap), so those stop at 64.
pub fn largest_batch(size: usize) -> usize {
    if size > 16 * 1024 { 64 } else { 200 }
}

/// One probe: batches of `batch` requests of `size` bytes on CPU 0's queue for `duration_ns`.
/// Returns (requests, nanoseconds from submission to last completion, summed).
fn probe(
    config: &BenchConfig,
    size: usize,
    batch: usize,
    duration_ns: u64,
) -> Result<(u64, u64), String> {
    let device = config.device;
    // The worker's time from submission to last completion, summed.
    let in_device_ns = Arc::new(AtomicU64::new(0));
    let worker_ns = in_device_ns.clone();
    let (ops, _, _) = run_workers(1, duration_ns, move |_, deadline| {
        let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &[0x5au8; 16])
            .map_err(|e| format!("{e}"))?;
        let queue = device.data_queue_for(percpu::cpu_index());
        let src = vec![0x3cu8; size];
        let iv = [0u8; 16];
        let mut requests = RequestBatch::with_capacity(batch);
        let mut posted = Vec::with_capacity(batch);
        let mut busy_ns = 0u64;
        let mut ops = 0u64;
        queue.set_polled(true);
        let result = (|| {
            while ops == 0 || tsc::now_ns() < deadline {
                for _ in 0..batch {
                    let builder = device
                        .build_cipher_request(queue, &session.as_cipher_session(), &iv, &src)
                        .map_err(|e| format!("{e}"))?;
                    requests.push(builder).map_err(|e| format!("{e}"))?;
                }
                let start = tsc::now_ns();
                requests.submit(&mut posted).map_err(|e| format!("{e}"))?;
                // The same deadline as every request: a device that stops answering ends
                // the probe with an error instead of spinning for ever.
                Request::poll_all(&posted, device.health().deadline()).map_err(|_| {
                    let missing = posted.iter().filter(|r| !r.is_done()).count();
                    format!(
                        "the device did not answer {missing} of {batch} requests: {}",
                        device.health().timed_out()
                    )
                })?;
                busy_ns += tsc::now_ns() - start;
                for request in posted.drain(..) {
                    let out = CipherRequest::from_request(request, device.health().clone())
                        .wait()
                        .map_err(|e| format!("{e}"))?;
                    if out.len() != size {
                        return Err(format!("{} bytes back for {size}", out.len()));
                    }
                }
                ops += batch as u64;
            }
            Ok(())
        })();
        queue.set_polled(false);
        result?;
        worker_ns.store(busy_ns, Ordering::Relaxed);
        Ok(ops)
    })?;
    Ok((ops, in_device_ns.load(Ordering::Relaxed)))
}

/// The device's rate for `size`-byte requests at `batch` per kick, in requests per second.
pub fn device_rate(
    config: &BenchConfig,
    size: usize,
    batch: usize,
    duration_ns: u64,
) -> Result<u64, String> {
    let (ops, ns) = probe(config, size, batch, duration_ns)?;
    Ok(ops * 1_000_000_000 / ns.max(1))
}

pub fn run(config: &BenchConfig) -> Result<Vec<Row>, String> {
    let mut points: Vec<(usize, usize)> = SIZES
        .iter()
        .flat_map(|&s| BATCHES.iter().map(move |&b| (s, b.min(largest_batch(s)))))
        .collect();
    points.dedup();
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for (i, &(size, batch)) in points.iter().enumerate() {
        progress(
            "limit",
            i,
            points.len(),
            &format!("{size} B, batches of {batch}"),
        );
        let trips_before = trips::all_cpus();
        let (ops, ns) = probe(config, size, batch, config.point_ns)?;
        let trips = trips::all_cpus().since(&trips_before);
        let rate = ops * 1_000_000_000 / ns.max(1);
        let ns_per_op = ns / ops.max(1);
        table.push(format!(
            "{size:>6} {batch:>6} {rate:>11} {:>6}.{}",
            ns_per_op / 1000,
            ns_per_op / 100 % 10
        ));
        rows.push(
            Row::new("limit")
                .num("size", size)
                .num("batch", batch)
                .num("ops_per_s", rate)
                .num("ns_per_op", ns_per_op)
                .num("requests", ops)
                .trips(&trips, ops)
                .plot("batch", &["ops_per_s"], &["size"], &[])
                .units(&[
                    ("size", "B"),
                    ("batch", "requests"),
                    ("ops_per_s", "ops/s"),
                    ("ns_per_op", "ns"),
                ])
                .emit(),
        );
    }
    println!(
        "bench limit: the device's own rate (AES-CBC; batches added with one kick, no interrupts, used ring polled)"
    );
    println!("  size  batch  ops/s(dev)  us/op");
    for line in table {
        println!("{line}");
    }
    Ok(rows)
}
