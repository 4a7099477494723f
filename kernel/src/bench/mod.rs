//! Benchmarks that reproduce the experiments of the posts in docs/DESIGN.md ("Sources") side by
//! side in one boot:
//! `bench ctrl` (control queue: busy-poll vs sleep), `bench kick` (doorbell inside vs
//! outside the queue lock), `bench limit` (the device's own rate: batches with one
//! kick, polled, no interrupts), `bench data` (throughput and latency against request size and
//! requests in flight, each row as a share of the device's rate), `bench scale` (shared vs per-CPU queues over every device),
//! `bench chain` (chained-IV streams, serial vs pipelined), `bench rsa` (RSA
//! sign/verify/encrypt/decrypt ops/s). `bench` runs them all. Options: `dur=<ms>` per point
//! (default 1000), `sweep=<name>` (`bench data`: one sweep only).
//!
//! Each prints a human table shaped like its source's and one JSON line per row (`{"bench":...}`).
//! Ratios are meaningful inside one boot only; tests never assert timing.

mod chain;
mod ctrl;
mod data;
mod kick;
mod limit;
mod report;
mod rsa;
mod scale;

use alloc::string::String;
use alloc::vec::Vec;

use crate::arch::qemu::{self, ExitCode};
use crate::println;
use crate::virtio::crypto::{Device, devices};

pub use report::Row;

/// What every bench needs to know.
pub struct BenchConfig {
    pub device: &'static Device,
    pub point_ns: u64,
    /// `sweep=`: `bench data` runs only this sweep.
    pub sweep: Option<&'static str>,
}

/// One benchmark: its name and the function producing its rows.
pub struct Bench {
    pub name: &'static str,
    pub run: fn(&BenchConfig) -> Result<Vec<Row>, String>,
}

pub static BENCHES: &[Bench] = &[
    Bench {
        name: "ctrl",
        run: ctrl::run,
    },
    Bench {
        name: "kick",
        run: kick::run,
    },
    Bench {
        name: "limit",
        run: limit::run,
    },
    Bench {
        name: "data",
        run: data::run,
    },
    Bench {
        name: "scale",
        run: scale::run,
    },
    Bench {
        name: "chain",
        run: chain::run,
    },
    Bench {
        name: "rsa",
        run: rsa::run,
    },
];

/// Parses `dur=<ms>`.
pub fn point_ns(cmdline: &crate::cmdline::Cmdline) -> Result<u64, String> {
    match cmdline.switch("dur") {
        None => Ok(1_000_000_000),
        Some(ms) => match ms.parse::<u64>() {
            Ok(ms) if (1..=60_000).contains(&ms) => Ok(ms * 1_000_000),
            _ => Err(alloc::format!(
                "dur={ms}: expected milliseconds per point, 1..60000"
            )),
        },
    }
}

/// Parses `sweep=<name>` (one of `bench data`'s sweeps).
pub fn sweep(cmdline: &crate::cmdline::Cmdline) -> Result<Option<&'static str>, String> {
    match cmdline.switch("sweep") {
        None => Ok(None),
        Some(name) => data::SWEEPS
            .iter()
            .find(|s| **s == name)
            .map(|s| Some(*s))
            .ok_or(alloc::format!(
                "sweep={}: expected one of {}",
                crate::cmdline::shown(name),
                data::SWEEPS.join(", ")
            )),
    }
}

/// `cargo run -- bench [ctrl|kick|data ...] [dur=ms] [sweep=name]`: runs the benches and exits
/// QEMU.
pub fn main(args: &[&str], cmdline: &crate::cmdline::Cmdline) -> ! {
    let (point_ns, sweep) = match point_ns(cmdline).and_then(|ns| Ok((ns, sweep(cmdline)?))) {
        Ok(parsed) => parsed,
        Err(e) => {
            println!("error: bench: {e}");
            qemu::exit(ExitCode::Failure)
        }
    };
    let selected: Vec<&Bench> = if args.is_empty() {
        BENCHES.iter().collect()
    } else {
        let mut chosen = Vec::new();
        for name in args {
            match BENCHES.iter().find(|b| b.name == *name) {
                Some(b) if chosen.iter().any(|c: &&Bench| c.name == b.name) => {
                    println!("error: bench: {name} is given more than once");
                    qemu::exit(ExitCode::Failure)
                }
                Some(b) => chosen.push(b),
                None => {
                    println!(
                        "error: bench: unknown benchmark {} (known: ctrl, kick, limit, data, scale, chain, rsa)",
                        crate::cmdline::shown(name)
                    );
                    qemu::exit(ExitCode::Failure)
                }
            }
        }
        chosen
    };
    let Some(&device) = devices().first() else {
        println!("error: bench: no device");
        qemu::exit(ExitCode::Failure)
    };
    let config = BenchConfig {
        device,
        point_ns,
        sweep,
    };
    println!(
        "bench: device {}, {} CPUs, {} ms per point, TSC {} MHz",
        device.name,
        crate::arch::percpu::cpu_count(),
        point_ns / 1_000_000,
        crate::arch::tsc::hz() / 1_000_000
    );
    for bench in selected {
        let before = iommu_counts();
        let result = (bench.run)(&config);
        if let (Some(before), Some(after)) = (before, iommu_counts()) {
            print_iommu_costs(bench.name, before, after);
        }
        match result {
            Ok(_) => {}
            Err(e) => {
                println!("error: bench {}: {e}", bench.name);
                qemu::exit(ExitCode::Failure)
            }
        }
    }
    qemu::exit(ExitCode::Success)
}

/// The IOMMU's counters and the requests posted to every device so far: maps, unmaps, entry
/// writes, IOTLB invalidations, fault-register reads, requests.
fn iommu_counts() -> Option<[u64; 6]> {
    use core::sync::atomic::Ordering::Relaxed;
    let c = &crate::mm::iommu::get()?.counters;
    let requests = devices()
        .iter()
        .flat_map(|d| core::iter::once(&d.control).chain(&d.data))
        .map(|q| q.counters.submitted.load(Relaxed))
        .sum();
    Some([
        c.maps.load(Relaxed),
        c.unmaps.load(Relaxed),
        c.entry_writes.load(Relaxed),
        c.invalidations.load(Relaxed),
        c.fault_polls.load(Relaxed),
        requests,
    ])
}

/// Where a benchmark's IOMMU cost came from, per request posted.
fn print_iommu_costs(name: &str, before: [u64; 6], after: [u64; 6]) {
    let d: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let per = |x: u64| x as f64 / d[5].max(1) as f64;
    println!(
        "iommu: bench {name}: {} requests; per request: {:.2} maps, {:.2} unmaps, {:.3} entry writes, {:.3} IOTLB invalidations, {:.3} fault-register reads",
        d[5],
        per(d[0]),
        per(d[1]),
        per(d[2]),
        per(d[3]),
        per(d[4])
    );
}
