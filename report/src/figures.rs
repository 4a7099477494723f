//! What to draw: figures built from rows, before any SVG. One run gives a report; two runs
//! (named "A" and "B") give the same figures with both overlaid, which is what `compare` draws.
//!
//! Plain rows become line figures (each declared y field against the declared x, one figure per
//! x field and unit, one line per series and field). Only row shapes that need it get a special
//! figure: log2 histograms (bars per bucket), lock statistics (wait/hold per mode), busy % per
//! CPU, and QEMU's host CPU per thread.

use crate::rows::Row;

/// One run's rows under a short name ("A", "B"; empty for a single run).
pub struct Run<'a> {
    pub name: &'a str,
    pub rows: &'a [Row],
}

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    /// Run index: the renderer draws later runs dashed, so overlaid runs stay apart.
    pub run: usize,
    pub points: Vec<(f64, f64)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BarGroup {
    pub name: String,
    /// One value per category.
    pub values: Vec<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    Lines {
        /// Powers of two (sizes, in flight) read best on a log2 axis.
        log2_x: bool,
        series: Vec<Series>,
    },
    Bars {
        categories: Vec<String>,
        groups: Vec<BarGroup>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub bench: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub body: Body,
    /// The numbers drawn, as the kernel wrote them: a header and rows, shown under the figure.
    pub table: Vec<Vec<String>>,
}

fn axis_label(name: &str, unit: &str) -> String {
    if unit.is_empty() {
        name.to_string()
    } else {
        format!("{name} ({unit})")
    }
}

fn run_prefix(run: &Run, text: &str) -> String {
    match (run.name.is_empty(), text.is_empty()) {
        (true, _) => text.to_string(),
        (false, true) => run.name.to_string(),
        (false, false) => format!("{} {text}", run.name),
    }
}

/// Every figure for every bench in `runs`, benches in order of first appearance.
pub fn build(runs: &[Run]) -> Vec<Figure> {
    let mut benches: Vec<String> = Vec::new();
    for run in runs {
        for bench in crate::rows::bench_names(run.rows) {
            if !benches.contains(&bench) {
                benches.push(bench);
            }
        }
    }
    let mut figures = Vec::new();
    for bench in &benches {
        let bench_runs: Vec<(usize, &Run, Vec<&Row>)> = runs
            .iter()
            .enumerate()
            .map(|(i, run)| {
                let rows = run.rows.iter().filter(|r| r.bench == *bench).collect();
                (i, run, rows)
            })
            .collect();
        figures.extend(line_figures(bench, &bench_runs));
        figures.extend(histogram_figures(bench, &bench_runs));
        figures.extend(lockstat_figures(bench, &bench_runs));
        figures.extend(per_row_bars(
            bench,
            &bench_runs,
            "busy % per CPU",
            "busy (%)",
            |row| {
                row.numbers("busy_pct")
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(cpu, pct)| (format!("CPU {cpu}"), pct))
                    .collect()
            },
        ));
        figures.extend(per_row_bars(
            bench,
            &bench_runs,
            "QEMU host CPU per thread",
            "host CPU (% of one core)",
            Row::host_cpu,
        ));
    }
    figures
}

type BenchRuns<'a> = [(usize, &'a Run<'a>, Vec<&'a Row>)];

/// One figure per (x field, unit of y): e.g. `data` gives ops/s, MB/s and latency against size,
/// and the same three against in flight.
fn line_figures(bench: &str, runs: &BenchRuns) -> Vec<Figure> {
    // (x field, y unit) in order of first appearance, with the y fields seen for it.
    let mut panels: Vec<(String, String, Vec<String>)> = Vec::new();
    for (_, _, rows) in runs {
        for row in rows {
            let x = row.x_field().unwrap_or_else(|| "row".to_string());
            for y in row.y_fields() {
                let unit = row.unit(&y);
                match panels
                    .iter_mut()
                    .find(|(px, pu, _)| *px == x && *pu == unit)
                {
                    Some((_, _, fields)) if fields.contains(&y) => {}
                    Some((_, _, fields)) => fields.push(y),
                    None => panels.push((x.clone(), unit, vec![y])),
                }
            }
        }
    }
    let mut figures = Vec::new();
    for (x, unit, fields) in panels {
        let mut series: Vec<Series> = Vec::new();
        let mut table = vec![vec![
            "run".to_string(),
            "series".to_string(),
            x.clone(),
            "field".to_string(),
            "value".to_string(),
        ]];
        let mut x_unit = String::new();
        for (run_index, run, rows) in runs {
            for row in rows {
                if row.x_field().unwrap_or_else(|| "row".to_string()) != x {
                    continue;
                }
                if x_unit.is_empty() {
                    x_unit = row.unit(&x);
                }
                for field in &fields {
                    let Some(y) = row.number(field) else { continue };
                    if row.unit(field) != unit {
                        continue;
                    }
                    let series_label = row.series_label();
                    let name = run_prefix(
                        run,
                        &if fields.len() > 1 || series_label.is_empty() {
                            [series_label.as_str(), field.as_str()]
                                .iter()
                                .filter(|s| !s.is_empty())
                                .copied()
                                .collect::<Vec<_>>()
                                .join(" ")
                        } else {
                            series_label.clone()
                        },
                    );
                    let point = (row.x_value(), y);
                    match series.iter_mut().find(|s| s.name == name) {
                        Some(s) => s.points.push(point),
                        None => series.push(Series {
                            name,
                            run: *run_index,
                            points: vec![point],
                        }),
                    }
                    table.push(vec![
                        run.name.to_string(),
                        series_label,
                        row.text(&x)
                            .unwrap_or_else(|| row.index_in_bench.to_string()),
                        field.clone(),
                        row.text(field).unwrap_or_default(),
                    ]);
                }
            }
        }
        for s in &mut series {
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        let xs: Vec<f64> = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .collect();
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(0.0, f64::max);
        let log2_x = min > 0.0 && max / min >= 16.0;
        let y_name = if fields.len() == 1 {
            fields[0].clone()
        } else {
            fields.join(", ")
        };
        figures.push(Figure {
            bench: bench.to_string(),
            title: format!("{bench}: {y_name} against {x}"),
            x_label: axis_label(&x, &x_unit),
            y_label: axis_label(&y_name, &unit),
            body: Body::Lines { log2_x, series },
            table,
        });
    }
    figures
}

/// Bucket `k` of a log2 histogram holds values `2^k ..= 2^(k+1)-1`; bucket 0 holds 0 and 1.
pub fn bucket_label(bucket: usize) -> String {
    if bucket == 0 {
        "0-1".to_string()
    } else {
        let low = 1u128 << bucket.min(100);
        format!("{low}-{}", low * 2 - 1)
    }
}

/// A bucket's lower bound, shortened (`16384` as `16k`).
pub fn bucket_floor_label(bucket: usize) -> String {
    let low = if bucket == 0 {
        0u128
    } else {
        1u128 << bucket.min(100)
    };
    match low {
        0..=9_999 => low.to_string(),
        10_000..=9_999_999 => format!("{}k", low / 1024),
        _ => format!("{}M", low / (1024 * 1024)),
    }
}

/// One figure per row label and histogram field, with one bar group per run, trimmed to the
/// buckets that hold anything.
fn histogram_figures(bench: &str, runs: &BenchRuns) -> Vec<Figure> {
    let mut wanted: Vec<(String, String, String)> = Vec::new(); // (field, row label, unit)
    for (_, _, rows) in runs {
        for row in rows {
            for field in row.hist_fields() {
                let entry = (field.clone(), row.label(), row.unit(&field));
                if !wanted.iter().any(|w| w.0 == entry.0 && w.1 == entry.1) {
                    wanted.push(entry);
                }
            }
        }
    }
    let mut figures = Vec::new();
    for (field, label, unit) in wanted {
        let mut groups: Vec<BarGroup> = Vec::new();
        for (_, run, rows) in runs {
            if let Some(counts) = rows
                .iter()
                .find(|r| r.label() == label)
                .and_then(|r| r.numbers(&field))
            {
                groups.push(BarGroup {
                    name: run_prefix(run, "count"),
                    values: counts,
                });
            }
        }
        let longest = groups.iter().map(|g| g.values.len()).max().unwrap_or(0);
        let used = |b: usize| {
            groups
                .iter()
                .any(|g| g.values.get(b).is_some_and(|v| *v > 0.0))
        };
        let Some(first) = (0..longest).find(|b| used(*b)) else {
            continue;
        };
        let last = (0..longest).rev().find(|b| used(*b)).unwrap_or(first);
        for group in &mut groups {
            group.values.resize(longest, 0.0);
            group.values = group.values[first..=last].to_vec();
        }
        // Bars are labelled by their bucket's lower bound (short enough to sit under a bar);
        // the table gives the whole range.
        let categories: Vec<String> = (first..=last).map(bucket_floor_label).collect();
        let ranges: Vec<String> = (first..=last).map(bucket_label).collect();
        let mut table = vec![
            std::iter::once("bucket".to_string())
                .chain(groups.iter().map(|g| g.name.clone()))
                .collect::<Vec<_>>(),
        ];
        for (i, bucket) in ranges.iter().enumerate() {
            let mut line = vec![bucket.clone()];
            line.extend(groups.iter().map(|g| format!("{}", g.values[i])));
            table.push(line);
        }
        figures.push(Figure {
            bench: bench.to_string(),
            title: format!("{bench}: {field}, {label}"),
            x_label: axis_label(&format!("{field}, log2 buckets from"), &unit),
            y_label: "count".to_string(),
            body: Body::Bars { categories, groups },
            table,
        });
    }
    figures
}

/// The lockstat columns a row must all hold to get lock figures.
const LOCKSTAT_FIELDS: [&str; 4] = [
    "wait_total_ns",
    "hold_total_ns",
    "wait_max_ns",
    "hold_max_ns",
];

/// Lock wait and hold time per row (mode and size), totals and maxima, in microseconds.
fn lockstat_figures(bench: &str, runs: &BenchRuns) -> Vec<Figure> {
    let has_lockstat = |row: &&Row| LOCKSTAT_FIELDS.iter().all(|f| row.number(f).is_some());
    if !runs
        .iter()
        .any(|(_, _, rows)| rows.iter().any(has_lockstat))
    {
        return Vec::new();
    }
    let mut figures = Vec::new();
    for (kind, fields) in [
        ("total", ["wait_total_ns", "hold_total_ns"]),
        ("max", ["wait_max_ns", "hold_max_ns"]),
    ] {
        let mut figure = per_row_bars(
            bench,
            runs,
            &format!("lock wait/hold {kind} per mode"),
            &format!("lock time {kind} (us)"),
            |row| {
                if !has_lockstat(&row) {
                    return Vec::new();
                }
                fields
                    .iter()
                    .map(|f| {
                        let name = f.trim_end_matches("_ns").replace('_', " ");
                        (name, row.number(f).unwrap_or(0.0) / 1000.0)
                    })
                    .collect()
            },
        );
        figures.append(&mut figure);
    }
    figures
}

/// A bar figure with one category per row (run and label) and one bar per named value that
/// `values` returns for it; nothing when no row has any.
fn per_row_bars(
    bench: &str,
    runs: &BenchRuns,
    what: &str,
    y_label: &str,
    values: impl Fn(&Row) -> Vec<(String, f64)>,
) -> Vec<Figure> {
    let mut categories = Vec::new();
    let mut group_names: Vec<String> = Vec::new();
    let mut cells: Vec<Vec<(String, f64)>> = Vec::new();
    // Rows of the same label from every run side by side.
    let mut labels: Vec<String> = Vec::new();
    for (_, _, rows) in runs {
        for row in rows {
            if !labels.contains(&row.label()) {
                labels.push(row.label());
            }
        }
    }
    for label in &labels {
        for (_, run, rows) in runs {
            let Some(row) = rows.iter().find(|r| r.label() == *label) else {
                continue;
            };
            let named = values(row);
            if named.is_empty() {
                continue;
            }
            for (name, _) in &named {
                if !group_names.contains(name) {
                    group_names.push(name.clone());
                }
            }
            categories.push(run_prefix(run, label));
            cells.push(named);
        }
    }
    if categories.is_empty() {
        return Vec::new();
    }
    let groups: Vec<BarGroup> = group_names
        .iter()
        .map(|name| BarGroup {
            name: name.clone(),
            values: cells
                .iter()
                .map(|named| named.iter().find(|(n, _)| n == name).map_or(0.0, |v| v.1))
                .collect(),
        })
        .collect();
    let mut table = vec![
        std::iter::once("row".to_string())
            .chain(group_names.iter().cloned())
            .collect::<Vec<_>>(),
    ];
    for (i, category) in categories.iter().enumerate() {
        let mut line = vec![category.clone()];
        line.extend(groups.iter().map(|g| format_value(g.values[i])));
        table.push(line);
    }
    vec![Figure {
        bench: bench.to_string(),
        title: format!("{bench}: {what}"),
        x_label: String::new(),
        y_label: y_label.to_string(),
        body: Body::Bars { categories, groups },
        table,
    }]
}

/// A number for a table: integers without a fraction, others to two decimals.
pub fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::parse_log;
    use crate::samples::*;

    fn figures_of(log: &str) -> Vec<Figure> {
        let parsed = parse_log(log);
        build(&[Run {
            name: "",
            rows: &parsed.rows,
        }])
    }

    fn titles(figures: &[Figure]) -> Vec<&str> {
        figures.iter().map(|f| f.title.as_str()).collect()
    }

    #[test]
    fn every_bench_gets_figures_with_axes_and_units_from_its_rows() {
        let figures = figures_of(&format!("{DATA_ROW}\n{CTRL_ROW}\n{KICK_ROW}\n"));
        for bench in ["data", "ctrl", "kick"] {
            assert!(
                figures.iter().any(|f| f.bench == bench),
                "no figure for {bench}"
            );
        }
        let ops = &figures[0];
        assert_eq!(ops.title, "data: ops_per_s against size");
        assert_eq!(ops.x_label, "size (B)");
        assert_eq!(ops.y_label, "ops_per_s (ops/s)");
        assert!(
            titles(&figures).contains(&"data: p50_us, p99_us against size"),
            "{:?}",
            titles(&figures)
        );
        let latency = figures
            .iter()
            .find(|f| f.title == "data: p50_us, p99_us against size")
            .unwrap();
        assert_eq!(latency.y_label, "p50_us, p99_us (us)");
        assert!(
            latency
                .table
                .iter()
                .any(|line| line.last().unwrap() == "1874")
        );
    }

    #[test]
    fn plain_rows_become_lines_per_series() {
        let poll2 = CTRL_ROW;
        let poll1 = CTRL_ROW.replace("\"workers\":2", "\"workers\":1");
        let sleep = CTRL_ROW.replace("\"poll\"", "\"sleep\"");
        let figures = figures_of(&format!("{poll2}\n{poll1}\n{sleep}\n"));
        let Body::Lines { series, log2_x } = &figures[0].body else {
            panic!("{:?}", figures[0]);
        };
        assert!(!log2_x, "1..2 workers is no log axis");
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["poll", "sleep"]);
        assert_eq!(
            series[0].points,
            [(1.0, 918.0), (2.0, 918.0)],
            "sorted by x"
        );
    }

    #[test]
    fn histograms_are_bars_on_the_used_log2_buckets() {
        let figures = figures_of(CTRL_ROW);
        let hist = figures
            .iter()
            .find(|f| f.title == "ctrl: destroy_latency_log2_us, poll, 2 tasks")
            .expect("a histogram figure");
        let Body::Bars { categories, groups } = &hist.body else {
            panic!()
        };
        assert_eq!(categories.first().unwrap(), "32");
        assert_eq!(categories.last().unwrap(), "8192");
        assert_eq!(groups[0].values[1], 484.0);
        assert_eq!(hist.table[2], ["64-127", "484"]);
        assert_eq!(
            hist.x_label,
            "destroy_latency_log2_us, log2 buckets from (us)"
        );
    }

    #[test]
    fn lockstat_rows_get_wait_and_hold_per_mode() {
        let figures = figures_of(KICK_ROW);
        let total = figures
            .iter()
            .find(|f| f.title == "kick: lock wait/hold total per mode")
            .expect("lock figure");
        let Body::Bars { categories, groups } = &total.body else {
            panic!()
        };
        assert_eq!(categories, &["locked, 16 B"]);
        assert_eq!(groups[0].name, "wait total");
        assert_eq!(groups[0].values, [102470.52]);
        assert!(titles(&figures).contains(&"kick: lock wait/hold max per mode"));
        assert!(
            !titles(&figures_of(DATA_ROW))
                .iter()
                .any(|t| t.contains("lock"))
        );
    }

    #[test]
    fn busy_and_host_cpu_are_bars_per_row() {
        let with_host = DATA_ROW.replace(
            "\"duration_ms\"",
            "\"host_cpu_pct\":{\"CPU 0/TCG\":98.5,\"qemu-system-x86\":40.0},\"duration_ms\"",
        );
        let figures = figures_of(&with_host);
        let busy = figures
            .iter()
            .find(|f| f.title == "data: busy % per CPU")
            .unwrap();
        let Body::Bars { groups, .. } = &busy.body else {
            panic!()
        };
        assert_eq!(groups.len(), 2);
        let host = figures
            .iter()
            .find(|f| f.title == "data: QEMU host CPU per thread")
            .unwrap();
        assert_eq!(host.table[1], ["4096 B", "98.50", "40"]);
        assert!(!titles(&figures_of(DATA_ROW)).contains(&"data: QEMU host CPU per thread"));
    }

    #[test]
    fn an_unknown_bench_without_declarations_still_gets_a_figure() {
        let figures = figures_of(UNDECLARED_ROW);
        assert_eq!(
            figures[0].title,
            "future: ops_per_s, latency_us against row"
        );
        assert_eq!(figures[0].x_label, "row");
    }

    #[test]
    fn two_runs_overlay_in_the_same_figures() {
        let a = parse_log(KICK_ROW).rows;
        let b = parse_log(&KICK_ROW.replace("22442", "30000")).rows;
        let figures = build(&[
            Run {
                name: "A",
                rows: &a,
            },
            Run {
                name: "B",
                rows: &b,
            },
        ]);
        let Body::Lines { series, .. } = &figures[0].body else {
            panic!()
        };
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["A locked", "B locked"]);
        assert_eq!(series[1].points, [(16.0, 30000.0)]);
        assert_eq!(series[1].run, 1);
    }

    #[test]
    fn bucket_labels_follow_the_kernel_histogram() {
        assert_eq!(bucket_label(0), "0-1");
        assert_eq!(bucket_label(1), "2-3");
        assert_eq!(bucket_label(13), "8192-16383");
        assert_eq!(bucket_floor_label(0), "0");
        assert_eq!(bucket_floor_label(14), "16k");
        assert_eq!(bucket_floor_label(24), "16M");
    }
}
