//! The benchmarks cannot rot: each runs with a tiny duration per point, finishes, and every row
//! it emits is JSON that parses and holds the fields its bench promises.

use alloc::format;

use super::TestResult;
use crate::bench::{BENCHES, BenchConfig};
use crate::ensure;
use crate::virtio::crypto::devices;

/// The fields a row of `bench` promises (`bench limit` has data-queue and control-queue rows).
fn required_fields(bench: &str, row: &serde_json::Value) -> &'static [&'static str] {
    match bench {
        "limit" if row["queue"] == "control" => {
            &["queue", "batch", "ops_per_s", "pairs", "trips_per_1k"]
        }
        "ctrl" => &[
            "mode",
            "workers",
            "sessions_per_kick",
            "trips_per_1k",
            "ops_per_s",
            "device_ops_per_s",
            "pct_of_device",
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
            "hold_p50_us",
            "hold_p99_us",
            "hold_log2_ns",
            "trips_per_1k",
        ],
        "rsa" => &[
            "bits",
            "op",
            "in_flight",
            "ops_per_s",
            "busy_pct",
            "trips_per_1k",
        ],
        "limit" => &[
            "size",
            "batch",
            "ops_per_s",
            "ns_per_op",
            "build_ns_per_op",
            "submit_ns_per_op",
            "collect_ns_per_op",
            "requests",
            "trips_per_1k",
        ],
        "chain" => &[
            "mode",
            "chain",
            "stream_bytes",
            "chunk",
            "mb_per_s",
            "pct_of_independent",
            "busy_pct",
            "trips_per_1k",
        ],
        "scale" => &[
            "queues",
            "size",
            "cpus",
            "ops_per_s",
            "ops_per_cpu_s",
            "busy_pct",
            "lock_contentions",
            "lock_wait_total_ns",
            "remote_wakes_per_1k",
            "ipis_per_1k",
            "trips_per_1k",
        ],
        _ => &[
            "size",
            "in_flight",
            "ops_per_s",
            "device_ops_per_s",
            "pct_of_device",
            "limited_by",
            "trips_per_1k",
            "mb_per_s",
            "p50_us",
            "p99_us",
            "busy_pct",
        ],
    }
}

/// A row's `"plot"` and `"units"` are what the host report tool draws from (it has no list of
/// benches): every field they name must exist in the row, with the shape the tool expects.
fn check_plot_declaration(bench: &str, row: &serde_json::Value, text: &str) -> TestResult {
    let plot = &row["plot"];
    let x = plot["x"]
        .as_str()
        .ok_or(format!("bench {bench}: no plot.x in {text}"))?;
    ensure!(
        row[x].is_number(),
        "bench {bench}: plot.x names \"{x}\", not a number in {text}"
    );
    let names = |key: &str| {
        plot[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<alloc::vec::Vec<_>>()
            })
            .ok_or(format!("bench {bench}: plot.{key} is not a list in {text}"))
    };
    let y = names("y")?;
    ensure!(!y.is_empty(), "bench {bench}: plot.y is empty in {text}");
    for field in y {
        ensure!(
            row[field].is_number(),
            "bench {bench}: plot.y names \"{field}\", not a number in {text}"
        );
    }
    for field in names("series")? {
        ensure!(
            row.get(field).is_some(),
            "bench {bench}: plot.series names missing \"{field}\" in {text}"
        );
    }
    for field in names("hist")? {
        ensure!(
            row[field].is_array(),
            "bench {bench}: plot.hist names \"{field}\", not a list in {text}"
        );
    }
    let units = row["units"]
        .as_object()
        .ok_or(format!("bench {bench}: no units object in {text}"))?;
    for (field, unit) in units {
        ensure!(
            row.get(field.as_str()).is_some() && unit.is_string(),
            "bench {bench}: units names missing \"{field}\" in {text}"
        );
    }
    Ok(())
}

/// Runs `bench` once and checks its rows. `Ok(false)`: every row is well formed but some row
/// counted no operation (at a tiny duration per point, a host that stalls QEMU for a point's
/// length can do that).
fn run_and_check(
    bench: &crate::bench::Bench,
    config: &BenchConfig,
) -> Result<bool, alloc::string::String> {
    let rows = (bench.run)(config).map_err(|e| format!("bench {}: {e}", bench.name))?;
    ensure!(!rows.is_empty(), "bench {} produced no rows", bench.name);
    let mut all_did_work = true;
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
        for field in required_fields(bench.name, &value) {
            ensure!(
                value.get(*field).is_some(),
                "bench {}: no \"{field}\" in {text}",
                bench.name
            );
        }
        check_plot_declaration(bench.name, &value, &text)?;
        let did_work = ["ops_per_s", "bytes_per_s"]
            .iter()
            .any(|rate| value[*rate].as_u64().is_some_and(|v| v > 0));
        if !did_work {
            crate::println!(
                "note: bench {}: no operations at {} ms per point in {text}",
                bench.name,
                config.point_ns / 1_000_000
            );
            all_did_work = false;
        }
    }
    Ok(all_did_work)
}

/// Each bench at 20 ms per point; one that counts no operation somewhere runs again at 250 ms,
/// then 2 s per point (a host that stalls QEMU for a whole point gives a row without work), and
/// fails if it still does none.
pub fn every_bench_runs_and_emits_parsable_json() -> TestResult {
    let device = *devices().first().ok_or("no device")?;
    for bench in BENCHES {
        let mut did_work = false;
        for point_ms in [20, 250, 2_000] {
            let config = BenchConfig {
                device,
                point_ns: point_ms * 1_000_000,
                sweep: None,
            };
            if run_and_check(bench, &config)? {
                did_work = true;
                break;
            }
        }
        ensure!(
            did_work,
            "bench {}: no operations in a row even at 2 s per point",
            bench.name
        );
    }
    Ok(())
}
