//! `bench chain`: chained-IV streams (the AF_ALG serialization discussion, docs/DESIGN.md). CBC-encrypt, CBC-decrypt and CTR streams
//! of 64 KiB and 1 MiB in chunks of 512 B, 4 KiB and 16 KiB, `chain=serial` (every chunk waits
//! for the previous one: AF_ALG's mutex) vs `chain=pipelined` (the design), one stream at a
//! time per worker, one worker per CPU. Beside them the discussion's reference point: independent
//! requests of the same size with their own IVs, kept 16 in flight per worker (the "raw non
//! chained" rate). Per row: MB/s, the fraction of the independent rate, busy %, and the stream's
//! chunks in the ring on average (time-weighted, measured by the stream).

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use vcrypt_drivers::crypto::{ChainMode, Cipher, Direction, Session};

use super::BenchConfig;
use super::report::{Row, busy_text, per_second, progress, run_workers, trips_text};
use crate::arch::{percpu, trips, tsc};
use crate::println;

/// Chunks a stream (and an independent worker) keeps outstanding.
const WINDOW: usize = 16;
const CHUNKS: [usize; 3] = [512, 4096, 16384];
const STREAMS: [usize; 2] = [64 * 1024, 1024 * 1024];
const MODES: [(&str, Cipher, Direction); 3] = [
    ("cbc-enc", Cipher::AesCbc, Direction::Encrypt),
    ("cbc-dec", Cipher::AesCbc, Direction::Decrypt),
    ("ctr", Cipher::AesCtr, Direction::Encrypt),
];

const PLOT_Y: &[&str] = &["mb_per_s", "pct_of_independent"];
const PLOT_SERIES: &[&str] = &["mode", "chain", "stream_bytes"];
const UNITS: &[(&str, &str)] = &[
    ("chunk", "B"),
    ("stream_bytes", "B"),
    ("mb_per_s", "MB/s"),
    ("bytes_per_s", "B/s"),
    ("pct_of_independent", "%"),
    ("duration_ms", "ms"),
];

static IN_RING_NS: AtomicU64 = AtomicU64::new(0);

/// Bytes per second through streams (`Some(mode)`) or independent requests (`None`).
fn point(
    config: &BenchConfig,
    cipher: Cipher,
    direction: Direction,
    chain: Option<ChainMode>,
    stream_bytes: usize,
    chunk: usize,
) -> Result<(u64, Vec<u32>, u64, u64), String> {
    let device = config.device;
    IN_RING_NS.store(0, Ordering::Relaxed);
    let workers = percpu::cpu_count();
    let (bytes, busy, elapsed) = run_workers(workers, config.point_ns, move |w, deadline| {
        let key = [0x11u8 + w as u8; 16];
        let session = Session::new(device, cipher, direction, &key).map_err(|e| format!("{e}"))?;
        let data = vec![0xa5u8; stream_bytes.max(chunk)];
        let iv = [0u8; 16];
        let mut bytes = 0u64;
        match chain {
            Some(mode) => {
                let mut in_ring = 0;
                while tsc::now_ns() < deadline {
                    let mut stream = session
                        .stream_with(&iv, mode, WINDOW)
                        .map_err(|e| format!("{e}"))?;
                    stream
                        .process(data[..stream_bytes].chunks(chunk), |o| {
                            bytes += o.len() as u64
                        })
                        .map_err(|e| format!("{e}"))?;
                    in_ring += stream.stats().in_ring_ns;
                }
                IN_RING_NS.fetch_add(in_ring, Ordering::Relaxed);
            }
            None => {
                let queue = device.data_queue_for(percpu::cpu_index());
                let mut pending = VecDeque::new();
                let mut n = 0u64;
                loop {
                    if tsc::now_ns() < deadline && pending.len() < WINDOW {
                        n += 1;
                        let own_iv = (n as u128).to_be_bytes();
                        pending.push_back(
                            device
                                .start_cipher_request(
                                    queue,
                                    &session.as_cipher_session(),
                                    &own_iv,
                                    &data[..chunk],
                                )
                                .map_err(|e| format!("{e}"))?,
                        );
                        continue;
                    }
                    let Some(p) = pending.pop_front() else { break };
                    bytes += p.wait().map_err(|e| format!("{e}"))?.len() as u64;
                }
            }
        }
        Ok(bytes)
    })?;
    Ok((bytes, busy, elapsed, IN_RING_NS.load(Ordering::Relaxed)))
}

fn hundredths(x: u64) -> String {
    format!("{}.{:02}", x / 100, x % 100)
}

pub fn run(config: &BenchConfig) -> Result<Vec<Row>, String> {
    let total = MODES.len() * CHUNKS.len() * (1 + STREAMS.len() * ChainMode::ALL.len());
    let mut done = 0;
    let mut rows = Vec::new();
    let mut table = Vec::new();
    let was_allowed = config.device.allows_unadvertised();
    config.device.set_allow_unadvertised(true);
    let result = (|| -> Result<(), String> {
        for (name, cipher, direction) in MODES {
            for chunk in CHUNKS {
                progress(
                    "chain",
                    done,
                    total,
                    &format!("{name}, independent {chunk} B"),
                );
                done += 1;
                let trips_before = trips::all_cpus();
                let (bytes, busy, elapsed, _) = point(config, cipher, direction, None, 0, chunk)?;
                let trips = trips::all_cpus().since(&trips_before);
                let requests = bytes / chunk as u64;
                let reference = per_second(bytes, elapsed);
                let mb_s = reference / 1_000_000;
                table.push(format!(
                    "{name:<8} {:>8} {chunk:>6} {:<12} {mb_s:>7} {:>7}% {:>9} {:>8}   {}",
                    "-",
                    "independent",
                    100,
                    format!("{WINDOW} max"),
                    trips_text(&trips, requests),
                    busy_text(&busy)
                ));
                rows.push(
                    Row::new("chain")
                        .str("mode", name)
                        .str("chain", "independent")
                        .num("stream_bytes", 0)
                        .num("chunk", chunk)
                        .num("mb_per_s", mb_s)
                        .num("bytes_per_s", reference)
                        .num("pct_of_independent", 100)
                        .num("window", WINDOW)
                        .busy(&busy)
                        .trips(&trips, requests)
                        .num("duration_ms", elapsed / 1_000_000)
                        .plot("chunk", PLOT_Y, PLOT_SERIES, &[])
                        .units(UNITS)
                        .emit(),
                );
                for stream_bytes in STREAMS {
                    for chain in ChainMode::ALL {
                        progress(
                            "chain",
                            done,
                            total,
                            &format!(
                                "{name}, {} KiB streams of {chunk} B chunks, chain={}",
                                stream_bytes / 1024,
                                chain.name()
                            ),
                        );
                        done += 1;
                        let trips_before = trips::all_cpus();
                        let (bytes, busy, elapsed, in_ring_ns) =
                            point(config, cipher, direction, Some(chain), stream_bytes, chunk)?;
                        let trips = trips::all_cpus().since(&trips_before);
                        let requests = bytes / chunk as u64;
                        let rate = per_second(bytes, elapsed);
                        let mb_s = rate / 1_000_000;
                        let pct = rate * 100 / reference.max(1);
                        // Per stream (one per worker at a time): time-weighted chunks in the ring.
                        let workers = percpu::cpu_count() as u64;
                        let in_flight_x100 = in_ring_ns * 100 / (elapsed * workers).max(1);
                        table.push(format!(
                            "{name:<8} {:>7}K {chunk:>6} {:<12} {mb_s:>7} {pct:>7}% {:>9} {:>8}   {}",
                            stream_bytes / 1024,
                            chain.name(),
                            hundredths(in_flight_x100),
                            trips_text(&trips, requests),
                            busy_text(&busy)
                        ));
                        rows.push(
                            Row::new("chain")
                                .str("mode", name)
                                .str("chain", chain.name())
                                .num("stream_bytes", stream_bytes)
                                .num("chunk", chunk)
                                .num("mb_per_s", mb_s)
                                .num("bytes_per_s", rate)
                                .num("pct_of_independent", pct)
                                .num("avg_in_flight", hundredths(in_flight_x100))
                                .busy(&busy)
                                .trips(&trips, requests)
                                .num("duration_ms", elapsed / 1_000_000)
                                .plot("chunk", PLOT_Y, PLOT_SERIES, &[])
                                .units(UNITS)
                                .emit(),
                        );
                    }
                }
            }
        }
        Ok(())
    })();
    config.device.set_allow_unadvertised(was_allowed);
    result?;
    println!(
        "bench chain: chained-IV streams, {} workers (one stream each at a time), window {WINDOW}",
        percpu::cpu_count()
    );
    println!(
        "mode       stream  chunk chain           MB/s  of indep in flight trips/1k   busy per CPU (sum)"
    );
    for line in table {
        println!("{line}");
    }
    println!(
        "AF_ALG serialization discussion, Jan 2018 (Chelsio, 8K CBC): a mutex around each request of a socket = ~30% of independent \
         requests; a queue in the driver after building the descriptors = ~50%."
    );
    println!(
        "cbc-enc cannot pipeline: chunk n+1's IV is chunk n's last ciphertext block, so one chunk \
         is in the ring in both modes; pipelined builds the next ahead and posts it from the \
         completion handler (no task wake-up, no build in between)."
    );
    Ok(rows)
}
