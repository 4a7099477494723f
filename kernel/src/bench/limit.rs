//! `bench limit`: the device's own rate, the ceiling the other numbers are compared with.
//! Batches of AES-CBC requests are added to one data queue with a single kick; the queue is
//! handed to a poller (the device is asked for no interrupts) and polled until the last
//! request is back. What counts is the time from the submission to the last completion: the
//! device working with nothing in its way. Each data row also says what the guest's own work
//! around a request costs, measured in the same loop: building it, posting it (the batch's
//! share of the lock hold and the kick), and collecting it (its output checked, its slot
//! released). The control queue gets the same treatment: batches of session creates, then of
//! destroys, polled (`bench ctrl` rows are a share of its rate).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{Cipher, Direction, Session};
use vcrypt_drivers::sync::IrqSpinLock;
use vcrypt_drivers::virtio_crypto::cipher::CipherRequest;
use vcrypt_drivers::virtio_crypto::request::{Request, RequestBatch};

use super::BenchConfig;
use super::report::{Row, progress, run_workers};
use crate::arch::{percpu, trips, tsc};
use crate::println;

/// Request sizes and batch sizes of `bench limit`.
const SIZES: [usize; 3] = [16, 4096, 65536];
const BATCHES: [usize; 4] = [1, 8, 64, 200];
/// Session pairs per batch on the control queue (64: one round of a control batch, a quarter
/// of the control queue's slots, and well inside the device's 256 sessions).
const CONTROL_BATCHES: [usize; 3] = [1, 8, 64];
/// The control queue's batch that is its own rate (the 100% of `bench ctrl`'s `%dev`).
pub const CONTROL_RATE_BATCH: usize = 64;

/// What one probe measured, summed over its batches.
#[derive(Default)]
struct Probe {
    requests: u64,
    /// From each submission to its last completion.
    in_device_ns: u64,
    /// The guest's own work: building the requests, submitting them, collecting the outputs.
    build_ns: u64,
    submit_ns: u64,
    collect_ns: u64,
}

/// The largest batch for `size`: a 64 KiB request takes one of the queue's 16 large blocks
/// (more spill to the heap), so those stop at 64.
pub fn largest_batch(size: usize) -> usize {
    if size > 16 * 1024 { 64 } else { 200 }
}

/// One probe: batches of `batch` requests of `size` bytes on CPU 0's queue for `duration_ns`.
fn probe(
    config: &BenchConfig,
    size: usize,
    batch: usize,
    duration_ns: u64,
) -> Result<Probe, String> {
    let device = config.device;
    let result = Arc::new(IrqSpinLock::new("bench-probe", Probe::default()));
    let worker_result = result.clone();
    run_workers(1, duration_ns, move |_, deadline| {
        let session = Session::new(device, Cipher::AesCbc, Direction::Encrypt, &[0x5au8; 16])
            .map_err(|e| format!("{e}"))?;
        let queue = device.data_queue_for(percpu::cpu_index());
        let src = vec![0x3cu8; size];
        let iv = [0u8; 16];
        let mut requests = RequestBatch::with_capacity(batch);
        let mut posted = Vec::with_capacity(batch);
        let mut probe = Probe::default();
        queue.set_polled(true);
        let result = (|| {
            while probe.requests == 0 || tsc::now_ns() < deadline {
                let building = tsc::now_ns();
                for _ in 0..batch {
                    let builder = device
                        .build_cipher_request(queue, &session.as_cipher_session(), &iv, &src)
                        .map_err(|e| format!("{e}"))?;
                    requests.push(builder).map_err(|e| format!("{e}"))?;
                }
                let start = tsc::now_ns();
                requests.submit(&mut posted).map_err(|e| format!("{e}"))?;
                let submitted = tsc::now_ns();
                // The same deadline as every request: a device that stops answering ends
                // the probe with an error instead of spinning for ever.
                Request::poll_all(&posted, device.health().deadline()).map_err(|_| {
                    let missing = posted.iter().filter(|r| !r.is_done()).count();
                    format!(
                        "the device did not answer {missing} of {batch} requests: {}",
                        device.health().timed_out()
                    )
                })?;
                let answered = tsc::now_ns();
                for request in posted.drain(..) {
                    let out = CipherRequest::from_request(request, device.health().clone())
                        .wait()
                        .map_err(|e| format!("{e}"))?;
                    if out.len() != size {
                        return Err(format!("{} bytes back for {size}", out.len()));
                    }
                }
                probe.build_ns += start - building;
                probe.submit_ns += submitted - start;
                probe.in_device_ns += answered - start;
                probe.collect_ns += tsc::now_ns() - answered;
                probe.requests += batch as u64;
            }
            Ok(())
        })();
        queue.set_polled(false);
        result?;
        let requests = probe.requests;
        *worker_result.lock() = probe;
        Ok(requests)
    })?;
    let probe = core::mem::take(&mut *result.lock());
    Ok(probe)
}

/// The device's rate for `size`-byte requests at `batch` per kick, in requests per second.
pub fn device_rate(
    config: &BenchConfig,
    size: usize,
    batch: usize,
    duration_ns: u64,
) -> Result<u64, String> {
    let probe = probe(config, size, batch, duration_ns)?;
    Ok(probe.requests * 1_000_000_000 / probe.in_device_ns.max(1))
}

/// The control queue's rate at `batch` session pairs per kick (a batch of creates, then one of
/// destroys, polled), in pairs per second; and the pairs measured.
pub fn control_rate(
    config: &BenchConfig,
    batch: usize,
    duration_ns: u64,
) -> Result<(u64, u64), String> {
    let device = config.device;
    let key = [0x5au8; 16];
    let keys = vec![&key[..]; batch];
    let deadline = tsc::now_ns() + duration_ns;
    let (mut pairs, mut ns) = (0u64, 0u64);
    while pairs == 0 || tsc::now_ns() < deadline {
        ns += device
            .time_polled_session_pairs(Cipher::AesCbc, Direction::Encrypt, &keys)
            .map_err(|e| format!("control queue, batches of {batch}: {e}"))?;
        pairs += batch as u64;
    }
    Ok((pairs * 1_000_000_000 / ns.max(1), pairs))
}

/// Nanoseconds per request as "us.t".
fn micros(ns: u64) -> String {
    format!("{}.{}", ns / 1000, ns / 100 % 10)
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
        let probe = probe(config, size, batch, config.point_ns)?;
        let trips = trips::all_cpus().since(&trips_before);
        let ops = probe.requests.max(1);
        let rate = probe.requests * 1_000_000_000 / probe.in_device_ns.max(1);
        let ns_per_op = probe.in_device_ns / ops;
        let (build, submit, collect) = (
            probe.build_ns / ops,
            probe.submit_ns / ops,
            probe.collect_ns / ops,
        );
        table.push(format!(
            "{size:>6} {batch:>6} {rate:>11} {:>7} {:>8} {:>8} {:>8}",
            micros(ns_per_op),
            micros(build),
            micros(submit),
            micros(collect),
        ));
        rows.push(
            Row::new("limit")
                .num("size", size)
                .num("batch", batch)
                .num("ops_per_s", rate)
                .num("ns_per_op", ns_per_op)
                .num("build_ns_per_op", build)
                .num("submit_ns_per_op", submit)
                .num("collect_ns_per_op", collect)
                .num("requests", probe.requests)
                .trips(&trips, probe.requests)
                .plot("batch", &["ops_per_s"], &["size"], &[])
                .units(&[
                    ("size", "B"),
                    ("batch", "requests"),
                    ("ops_per_s", "ops/s"),
                    ("ns_per_op", "ns"),
                    ("build_ns_per_op", "ns"),
                    ("submit_ns_per_op", "ns"),
                    ("collect_ns_per_op", "ns"),
                ])
                .emit(),
        );
    }
    let mut control_table = Vec::new();
    for (i, &batch) in CONTROL_BATCHES.iter().enumerate() {
        progress(
            "limit",
            i,
            CONTROL_BATCHES.len(),
            &format!("control queue, {batch} session pairs per batch"),
        );
        let trips_before = trips::all_cpus();
        let (rate, pairs) = control_rate(config, batch, config.point_ns)?;
        let trips = trips::all_cpus().since(&trips_before);
        control_table.push(format!(
            "{batch:>6} {rate:>12} {:>7}",
            micros(1_000_000_000 / rate.max(1))
        ));
        rows.push(
            Row::new("limit")
                .str("queue", "control")
                .num("batch", batch)
                .num("ops_per_s", rate)
                .num("pairs", pairs)
                .trips(&trips, pairs)
                .plot("batch", &["ops_per_s"], &["queue"], &[])
                .units(&[
                    ("batch", "session pairs"),
                    ("ops_per_s", "pairs/s"),
                    ("pairs", "pairs"),
                ])
                .emit(),
        );
    }
    println!(
        "bench limit: the device's own rate (AES-CBC; batches added with one kick, no interrupts, used ring polled)"
    );
    println!("and the guest's own work per request around it: build, submit, collect (us)");
    println!("  size  batch  ops/s(dev)   us/op    build   submit  collect");
    for line in table {
        println!("{line}");
    }
    println!(
        "control queue: session pairs (a batch of creates, then one of destroys, each one kick, polled)"
    );
    println!(" batch  pairs/s(dev) us/pair");
    for line in control_table {
        println!("{line}");
    }
    Ok(rows)
}
