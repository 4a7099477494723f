//! `bench kick`: AES-CBC data requests (16 B, 4 KiB, 64 KiB) from two workers per CPU with the
//! doorbell rung inside the queue lock (`kick=locked`, what "virtio: Support releasing lock during kick" replaced) vs after
//! dropping it (`kick=unlocked`). Per row: ops/s, MB/s, busy %, and the queue lock's lockstat
//! line (acquisitions, contentions, wait and hold time min/max/total), with the hold times'
//! log2 histogram and its p50/p99: the maximum is set by the host descheduling a vCPU that
//! holds the lock and moves from run to run; the typical hold is what releasing the lock
//! around the doorbell changes.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{Cipher, Direction, Session};
use vcrypt_drivers::sync::LockStatSnapshot;
use vcrypt_drivers::sync::spinlock::{set_stats_enabled, stats_enabled};
use vcrypt_drivers::virtio_crypto::queue::KickMode;

use super::BenchConfig;
use super::report::{Row, busy_text, per_second, progress, run_workers, trips_text};
use crate::arch::{percpu, trips, tsc};
use crate::println;

fn us(ns: u64) -> String {
    format!("{}.{:02}", ns / 1000, ns % 1000 / 10)
}

pub fn run(config: &BenchConfig) -> Result<Vec<Row>, String> {
    let device = config.device;
    let workers = 2 * percpu::cpu_count();
    let sizes = [16usize, 4096, 65536];
    let modes = [KickMode::Locked, KickMode::Unlocked];
    let original = device.data[0].kick_mode();
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for (s, size) in sizes.into_iter().enumerate() {
        for (m, mode) in modes.into_iter().enumerate() {
            let name = if mode == KickMode::Locked {
                "locked"
            } else {
                "unlocked"
            };
            progress(
                "kick",
                s * modes.len() + m,
                sizes.len() * modes.len(),
                &format!("kick={name}, {size} B, {workers} workers"),
            );
            device.set_kick_mode(mode);
            for q in &device.data {
                q.reset_lock_stats();
            }
            let stats_were_enabled = stats_enabled();
            set_stats_enabled(true);
            let trips_before = trips::all_cpus();
            let result = run_workers(workers, config.point_ns, move |_, deadline| {
                let session =
                    Session::new(device, Cipher::AesCbc, Direction::Encrypt, &[0x22u8; 16])
                        .map_err(|e| format!("{e}"))?;
                let src = vec![0x5au8; size];
                let mut dst = vec![0u8; size];
                let mut ops = 0;
                // At least one request, however late the worker starts.
                while ops == 0 || tsc::now_ns() < deadline {
                    session
                        .encrypt(&[0u8; 16], &src, &mut dst)
                        .map_err(|e| format!("{e}"))?;
                    ops += 1;
                }
                Ok(ops)
            });
            set_stats_enabled(stats_were_enabled);
            device.set_kick_mode(original);
            let (ops, busy, elapsed) = result?;
            let trips = trips::all_cpus().since(&trips_before);
            let mut lock = LockStatSnapshot::default();
            for q in &device.data {
                lock.merge(&q.lock_stats());
            }
            let ops_s = per_second(ops, elapsed);
            let mb_s = ops_s * size as u64 / 1_000_000;
            let (hold_p50, hold_p99) = (lock.hold_percentile_ns(50), lock.hold_percentile_ns(99));
            table.push(format!(
                "{size:>6} {name:<9} {ops_s:>8} {mb_s:>6}  {:>12} {:>11} {:>9} {:>10} {:>12} {:>9} {:>9} {:>9} {:>10} {:>13} {:>8}   {}",
                lock.acquisitions,
                lock.contentions,
                us(lock.wait_min),
                us(lock.wait_max),
                us(lock.wait_total),
                us(lock.hold_min),
                us(hold_p50),
                us(hold_p99),
                us(lock.hold_max),
                us(lock.hold_total),
                trips_text(&trips, ops),
                busy_text(&busy)
            ));
            rows.push(
                Row::new("kick")
                    .str("mode", name)
                    .num("size", size)
                    .num("workers", workers)
                    .num("ops_per_s", ops_s)
                    .num("mb_per_s", mb_s)
                    .busy(&busy)
                    .trips(&trips, ops)
                    .num("acquisitions", lock.acquisitions)
                    .num("contentions", lock.contentions)
                    .num("wait_min_ns", lock.wait_min)
                    .num("wait_max_ns", lock.wait_max)
                    .num("wait_total_ns", lock.wait_total)
                    .num("hold_min_ns", lock.hold_min)
                    .num("hold_max_ns", lock.hold_max)
                    .num("hold_total_ns", lock.hold_total)
                    .num("hold_p50_us", us(hold_p50))
                    .num("hold_p99_us", us(hold_p99))
                    .nums("hold_log2_ns", &lock.hold_log2_ns)
                    .num("duration_ms", elapsed / 1_000_000)
                    .plot("size", &["ops_per_s", "mb_per_s"], &["mode"], &[])
                    .units(&[
                        ("size", "B"),
                        ("workers", "tasks"),
                        ("ops_per_s", "ops/s"),
                        ("mb_per_s", "MB/s"),
                        ("busy_pct", "%"),
                        ("busy_sum_pct", "%"),
                        ("acquisitions", "count"),
                        ("contentions", "count"),
                        ("wait_min_ns", "ns"),
                        ("wait_max_ns", "ns"),
                        ("wait_total_ns", "ns"),
                        ("hold_min_ns", "ns"),
                        ("hold_max_ns", "ns"),
                        ("hold_total_ns", "ns"),
                        ("hold_p50_us", "us"),
                        ("hold_p99_us", "us"),
                        ("hold_log2_ns", "ns"),
                        ("duration_ms", "ms"),
                    ])
                    .emit(),
            );
        }
    }
    println!(
        "bench kick: AES-CBC requests, {workers} workers; queue lock statistics (times in us; hold p50/p99: upper bounds of their log2 buckets)"
    );
    println!(
        "  size mode         ops/s   MB/s  acquisitions contentions  wait-min   wait-max   wait-total  hold-min  hold-p50  hold-p99   hold-max    hold-total trips/1k   busy per CPU (sum)"
    );
    for line in table {
        println!("{line}");
    }
    Ok(rows)
}
