//! The benchmarks cannot rot: each runs with a tiny duration per point, finishes, and every row
//! it emits is JSON that parses and holds the fields its bench promises.

use alloc::format;

use super::TestResult;
use crate::bench::{BENCHES, BenchConfig};
use crate::ensure;
use crate::virtio::crypto::devices;

fn required_fields(bench: &str) -> &'static [&'static str] {
    match bench {
        "ctrl" => &[
            "mode",
            "workers",
            "ops_per_s",
            "busy_pct",
            "busy_sum_pct",
            "destroy_latency_log2_us",
        ],
        "kick" => &[
            "mode",
            "size",
            "ops_per_s",
            "mb_per_s",
            "busy_pct",
            "acquisitions",
            "contentions",
            "wait_min_ns",
            "wait_max_ns",
            "wait_total_ns",
            "hold_min_ns",
            "hold_max_ns",
            "hold_total_ns",
        ],
        "rsa" => &["bits", "op", "in_flight", "ops_per_s", "busy_pct"],
        _ => &[
            "size",
            "in_flight",
            "ops_per_s",
            "mb_per_s",
            "p50_us",
            "p99_us",
            "busy_pct",
        ],
    }
}

pub fn every_bench_runs_and_emits_parsable_json() -> TestResult {
    let device = *devices().first().ok_or("no device")?;
    let config = BenchConfig {
        device,
        point_ns: 20_000_000,
    };
    for bench in BENCHES {
        let rows = (bench.run)(&config).map_err(|e| format!("bench {}: {e}", bench.name))?;
        ensure!(!rows.is_empty(), "bench {} produced no rows", bench.name);
        for row in rows {
            let text = row.json();
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("bench {}: {e} in {text}", bench.name))?;
            ensure!(
                value["bench"] == bench.name,
                "row of bench {} says {}",
                bench.name,
                value["bench"]
            );
            for field in required_fields(bench.name) {
                ensure!(
                    value.get(*field).is_some(),
                    "bench {}: no \"{field}\" in {text}",
                    bench.name
                );
            }
            ensure!(
                value["ops_per_s"].as_u64().is_some_and(|v| v > 0),
                "bench {}: no operations in {text}",
                bench.name
            );
        }
    }
    Ok(())
}
