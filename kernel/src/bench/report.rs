//! One result row: printed as JSON (`{"bench":...}`) for tools, next to each bench's own table.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::arch::trips::TripCounts;
use crate::sched::busy::{BusyWindow, Percent};

/// A JSON object built field by field (numbers, strings, number arrays).
pub struct Row {
    fields: Vec<(&'static str, String)>,
}

impl Row {
    pub fn new(bench: &str) -> Row {
        Row {
            fields: alloc::vec![("bench", format!("\"{bench}\""))],
        }
    }

    pub fn str(mut self, key: &'static str, value: &str) -> Row {
        self.fields.push((key, format!("\"{value}\"")));
        self
    }

    pub fn num(mut self, key: &'static str, value: impl core::fmt::Display) -> Row {
        self.fields.push((key, format!("{value}")));
        self
    }

    pub fn nums(mut self, key: &'static str, values: &[u64]) -> Row {
        let items: Vec<String> = values.iter().map(|v| format!("{v}")).collect();
        self.fields.push((key, format!("[{}]", items.join(","))));
        self
    }

    /// Declares how a host tool plots this row, so a new bench needs no tool change: each `y`
    /// field against the `x` field, one line per distinct value of the `series` fields, and each
    /// `hist` field (log2 buckets in microseconds) as bars. Written as `"plot":{...}`.
    pub fn plot(mut self, x: &str, y: &[&str], series: &[&str], hist: &[&str]) -> Row {
        let list = |names: &[&str]| {
            let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
            format!("[{}]", quoted.join(","))
        };
        self.fields.push((
            "plot",
            format!(
                "{{\"x\":\"{x}\",\"y\":{},\"series\":{},\"hist\":{}}}",
                list(y),
                list(series),
                list(hist)
            ),
        ));
        self
    }

    /// Declares the unit of each named field (`"units":{"size":"B",...}`): axis labels and
    /// tables take them from the row, not from a tool's copy of every bench.
    pub fn units(mut self, units: &[(&str, &str)]) -> Row {
        let pairs: Vec<String> = units
            .iter()
            .map(|(field, unit)| format!("\"{field}\":\"{unit}\""))
            .collect();
        self.fields
            .push(("units", format!("{{{}}}", pairs.join(","))));
        self
    }

    /// Busy per CPU and their sum, in percent with one decimal (as "800% CPU" in the ctrl-queue commit message).
    pub fn busy(self, permille: &[u32]) -> Row {
        let sum: u32 = permille.iter().sum();
        let per_cpu: Vec<String> = permille
            .iter()
            .map(|p| format!("{}.{}", p / 10, p % 10))
            .collect();
        let mut row = self;
        row.fields
            .push(("busy_pct", format!("[{}]", per_cpu.join(","))));
        row.fields
            .push(("busy_sum_pct", format!("{}.{}", sum / 10, sum % 10)));
        row
    }

    pub fn json(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    }

    /// Prints the JSON line.
    pub fn emit(self) -> Row {
        crate::println!("{}", self.json());
        self
    }
}

impl Row {
    /// Trips into QEMU per 1,000 operations, by kind and in all (`trips_per_1k`: the fields
    /// `doorbells`, `mmio_reads`, `interrupts`, `eois`, `ipis` and `total`).
    pub fn trips(mut self, trips: &TripCounts, ops: u64) -> Row {
        let per_1k = |n: u64| format!("{:.1}", n as f64 * 1000.0 / ops.max(1) as f64);
        self.fields.push((
            "trips_per_1k",
            format!(
                "{{\"doorbells\":{},\"mmio_reads\":{},\"interrupts\":{},\"eois\":{},\"ipis\":{},\"total\":{}}}",
                per_1k(trips.doorbells),
                per_1k(trips.mmio_reads),
                per_1k(trips.interrupts),
                per_1k(trips.eois),
                per_1k(trips.ipis),
                per_1k(trips.total())
            ),
        ));
        self.num("in_trips_ns_per_op", trips.in_trips_ns / ops.max(1))
    }
}

/// Trips per 1,000 operations, all kinds together, for the tables.
pub fn trips_text(trips: &TripCounts, ops: u64) -> String {
    format!("{:.0}", trips.total() as f64 * 1000.0 / ops.max(1) as f64)
}

/// Busy per CPU as `12.5%/99.0%` and the sum.
pub fn busy_text(permille: &[u32]) -> String {
    let parts: Vec<String> = permille
        .iter()
        .map(|p| format!("{}", Percent(*p)))
        .collect();
    format!(
        "{} (sum {})",
        parts.join("/"),
        Percent(permille.iter().sum())
    )
}

/// Runs `work` on `workers` tasks spread over the CPUs for `duration_ns` and returns the total
/// operations they report and busy per CPU over the window.
pub fn run_workers<F>(
    workers: usize,
    duration_ns: u64,
    work: F,
) -> Result<(u64, Vec<u32>, u64), String>
where
    F: Fn(usize, u64) -> Result<u64, String> + Send + Sync + Clone + 'static,
{
    let cpus = crate::arch::percpu::cpu_count();
    let start = crate::arch::tsc::now_ns();
    let deadline = start + duration_ns;
    let window = BusyWindow::start();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let work = work.clone();
            crate::sched::spawn("bench-worker", Some(w % cpus), move || work(w, deadline))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("spawn: {e:?}"))?;
    let mut total = 0;
    for h in handles {
        total += h.join()?;
    }
    let elapsed = crate::arch::tsc::now_ns() - start;
    Ok((total, window.busy_permille(), elapsed))
}

/// Operations per second.
pub fn per_second(ops: u64, elapsed_ns: u64) -> u64 {
    ops * 1_000_000_000 / elapsed_ns.max(1)
}

/// Progress line.
pub fn progress(bench: &str, index: usize, total: usize, what: &str) {
    crate::println!("bench {bench}: point {}/{total}: {what} ...", index + 1);
}
