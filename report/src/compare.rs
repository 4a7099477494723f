//! `cargo results compare A B [--out DIR]`: two runs side by side. Rows are matched by what they
//! measured (bench, mode, sweep, x value; see `Row::key`), every metric gets its B/A ratio, and
//! the figures are drawn with both runs overlaid.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::figures::{self, Run};
use crate::output::{self, Results};
use crate::rows::Row;

/// One metric of one experiment in both runs.
#[derive(Debug, PartialEq)]
pub struct Line {
    pub key: String,
    pub metric: String,
    pub unit: String,
    pub a: Option<f64>,
    pub b: Option<f64>,
}

impl Line {
    /// B relative to A, when both exist and A is not zero.
    pub fn ratio(&self) -> Option<f64> {
        match (self.a, self.b) {
            (Some(a), Some(b)) if a != 0.0 => Some(b / a),
            _ => None,
        }
    }

    /// The ratio as a table cell, saying why when there is none.
    pub fn ratio_text(&self) -> String {
        match (self.a, self.b, self.ratio()) {
            (_, _, Some(r)) => format!("{r:.2}x"),
            (Some(_), None, _) => "only in A".to_string(),
            (None, Some(_), _) => "only in B".to_string(),
            _ => "n/a (A is 0)".to_string(),
        }
    }
}

/// Scalar metrics of a row, including QEMU's host CPU per thread.
fn metrics(row: &Row) -> Vec<(String, f64, String)> {
    let mut out: Vec<(String, f64, String)> = row
        .metric_names()
        .into_iter()
        .filter_map(|name| Some((name.clone(), row.number(&name)?, row.unit(&name))))
        .collect();
    for (thread, pct) in row.host_cpu() {
        out.push((format!("host_cpu_pct[{thread}]"), pct, "%".to_string()));
    }
    out
}

/// Each row with its key; a key that repeats within a run gets its occurrence (`#2`) so that
/// no row is lost.
fn keyed(rows: &[Row]) -> Vec<(String, &Row)> {
    let mut out: Vec<(String, &Row)> = Vec::new();
    for row in rows {
        let key = row.key();
        let seen = out
            .iter()
            .filter(|(k, _)| *k == key || k.starts_with(&format!("{key} #")))
            .count();
        let key = if seen == 0 {
            key
        } else {
            format!("{key} #{}", seen + 1)
        };
        out.push((key, row));
    }
    out
}

/// The experiments of both runs, in A's order then B's extras, each with its row in A and B.
fn experiments<'r>(a: &'r [Row], b: &'r [Row]) -> Vec<(String, Option<&'r Row>, Option<&'r Row>)> {
    let (a, b) = (keyed(a), keyed(b));
    let mut keys: Vec<String> = Vec::new();
    for (key, _) in a.iter().chain(&b) {
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }
    keys.into_iter()
        .map(|key| {
            let find =
                |rows: &[(String, &'r Row)]| rows.iter().find(|(k, _)| *k == key).map(|(_, r)| *r);
            let (row_a, row_b) = (find(&a), find(&b));
            (key, row_a, row_b)
        })
        .collect()
}

/// How many experiments are in both runs.
pub fn matched(a: &[Row], b: &[Row]) -> usize {
    experiments(a, b)
        .iter()
        .filter(|(_, a, b)| a.is_some() && b.is_some())
        .count()
}

/// Every metric of every experiment in either run, in A's order then B's extras.
pub fn lines(a: &[Row], b: &[Row]) -> Vec<Line> {
    let mut out = Vec::new();
    for (key, row_a, row_b) in experiments(a, b) {
        let metrics_a = row_a.map(metrics).unwrap_or_default();
        let metrics_b = row_b.map(metrics).unwrap_or_default();
        let mut names: Vec<(String, String)> = Vec::new();
        for (name, _, unit) in metrics_a.iter().chain(&metrics_b) {
            if !names.iter().any(|(n, _)| n == name) {
                names.push((name.clone(), unit.clone()));
            }
        }
        for (metric, unit) in names {
            let value = |m: &[(String, f64, String)]| m.iter().find(|v| v.0 == metric).map(|v| v.1);
            out.push(Line {
                key: key.clone(),
                a: value(&metrics_a),
                b: value(&metrics_b),
                metric,
                unit,
            });
        }
    }
    out
}

/// One measured text field (bench data's `limited_by`) of one experiment in both runs.
#[derive(Debug, PartialEq)]
pub struct TextLine {
    pub key: String,
    pub field: String,
    pub a: Option<String>,
    pub b: Option<String>,
}

/// Every measured text of every experiment found in both runs.
pub fn text_lines(a: &[Row], b: &[Row]) -> Vec<TextLine> {
    let mut out = Vec::new();
    for (key, row_a, row_b) in experiments(a, b) {
        let (Some(row_a), Some(row_b)) = (row_a, row_b) else {
            continue;
        };
        let mut fields = row_a.text_metric_names();
        for field in row_b.text_metric_names() {
            if !fields.contains(&field) {
                fields.push(field);
            }
        }
        for field in fields {
            out.push(TextLine {
                key: key.clone(),
                a: row_a.text(&field),
                b: row_b.text(&field),
                field,
            });
        }
    }
    out
}

fn cell(value: Option<f64>) -> String {
    value.map_or("—".to_string(), figures::format_value)
}

/// The comparison as Markdown: where each run ran, then per experiment each metric with A, B
/// and B/A.
pub fn markdown(a: &Results, b: &Results, lines: &[Line], texts: &[TextLine]) -> String {
    let mut out = String::from("# vcrypt bench comparison\n\n");
    for (name, results) in [("A", a), ("B", b)] {
        let _ = writeln!(out, "## {name}: {}\n", results.source.display());
        out.push_str(&output::markdown_meta(&results.meta));
        out.push('\n');
    }
    out.push_str("## Metrics (ratio = B / A)\n\n| experiment | metric | A | B | B/A |\n|---|---|---|---|---|\n");
    for line in lines {
        let metric = if line.unit.is_empty() {
            line.metric.clone()
        } else {
            format!("{} ({})", line.metric, line.unit)
        };
        let _ = writeln!(
            out,
            "| {} | {metric} | {} | {} | {} |",
            line.key,
            cell(line.a),
            cell(line.b),
            line.ratio_text()
        );
    }
    if !texts.is_empty() {
        out.push_str(
            "\n## Measured texts\n\n| experiment | field | A | B | |\n|---|---|---|---|---|\n",
        );
        for text in texts {
            let (a_text, b_text) = (
                text.a.as_deref().unwrap_or("—"),
                text.b.as_deref().unwrap_or("—"),
            );
            let verdict = if text.a == text.b { "same" } else { "differs" };
            let _ = writeln!(
                out,
                "| {} | {} | {a_text} | {b_text} | {verdict} |",
                text.key, text.field
            );
        }
    }
    let problems: Vec<&String> = a.problems.iter().chain(&b.problems).collect();
    if !problems.is_empty() {
        out.push_str("\n## Problems\n\n");
        for problem in problems {
            let _ = writeln!(out, "- {problem}");
        }
    }
    out
}

/// Compares two result folders (or saved logs) and writes `compare.md` and `index.html`.
pub fn compare(a_path: &Path, b_path: &Path, out: Option<PathBuf>) -> Result<PathBuf> {
    let a = output::load(a_path).context("run A")?;
    let b = output::load(b_path).context("run B")?;
    if a.rows.is_empty() && b.rows.is_empty() {
        bail!(
            "neither {} nor {} holds a bench row",
            a_path.display(),
            b_path.display()
        );
    }
    let dir = match out {
        Some(dir) => dir,
        None => crate::run::workspace_root()
            .join("target/report")
            .join(format!(
                "compare-{}",
                crate::run::utc_stamp(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                )
            )),
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if matched(&a.rows, &b.rows) == 0 {
        bail!(
            "no experiment of {} is in {}: rows match on bench, x and series fields (mode, sweep), and these runs share none",
            a_path.display(),
            b_path.display()
        );
    }
    let lines = lines(&a.rows, &b.rows);
    let texts = text_lines(&a.rows, &b.rows);
    let text = markdown(&a, &b, &lines, &texts);
    fs::write(dir.join("compare.md"), &text).context("writing compare.md")?;
    let figures = figures::build(&[
        Run {
            name: "A",
            rows: &a.rows,
        },
        Run {
            name: "B",
            rows: &b.rows,
        },
    ]);
    let mut problems: Vec<String> = a.problems.iter().chain(&b.problems).cloned().collect();
    let a_title = format!("A: {}", a.source.display());
    let b_title = format!("B: {}", b.source.display());
    let index = output::write_html(
        &dir,
        "vcrypt bench comparison (A and B overlaid)",
        &[(&a_title, &a.meta), (&b_title, &b.meta)],
        &figures,
        &mut problems,
    )?;
    print!("{text}");
    for problem in &problems {
        eprintln!("report: problem: {problem}");
    }
    eprintln!("report: open {}", index.display());
    println!("{}", dir.display());
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::parse_log;
    use crate::samples::*;

    #[test]
    fn matched_metrics_get_their_ratio() {
        let a = parse_log(KICK_ROW).rows;
        let b = parse_log(&KICK_ROW.replace("\"ops_per_s\":22442", "\"ops_per_s\":44884")).rows;
        let all = lines(&a, &b);
        let ops = all.iter().find(|l| l.metric == "ops_per_s").unwrap();
        assert_eq!(ops.key, "kick mode=locked size=16");
        assert_eq!(ops.unit, "ops/s");
        assert_eq!(ops.ratio(), Some(2.0));
        assert_eq!(ops.ratio_text(), "2.00x");
        assert!(all.iter().all(|l| l.a.is_some() && l.b.is_some()));
        assert!(
            !all.iter().any(|l| l.metric == "size"),
            "x is the key, not a metric"
        );
    }

    #[test]
    fn a_metric_or_row_missing_on_one_side_is_named() {
        let a = parse_log(&format!("{DATA_ROW}\n{CTRL_ROW}")).rows;
        let b = parse_log(&DATA_ROW.replace("\"p99_us\":1874,", "")).rows;
        let all = lines(&a, &b);
        let p99 = all.iter().find(|l| l.metric == "p99_us").unwrap();
        assert_eq!((p99.a, p99.b), (Some(1874.0), None));
        assert_eq!(p99.ratio_text(), "only in A");
        let ctrl: Vec<&Line> = all.iter().filter(|l| l.key.starts_with("ctrl")).collect();
        assert!(!ctrl.is_empty() && ctrl.iter().all(|l| l.ratio_text() == "only in A"));
        let reversed = lines(&b, &a);
        assert_eq!(
            reversed
                .iter()
                .find(|l| l.metric == "p99_us")
                .unwrap()
                .ratio_text(),
            "only in B"
        );
    }

    #[test]
    fn rows_match_on_their_key_never_on_measured_texts() {
        // Two bench data runs: the same points, other measured texts and numbers.
        let run = |limits: [&str; 2], ops: [&str; 2]| {
            let rows: Vec<String> = [("4096", 0), ("16", 1)]
                .iter()
                .map(|(size, n)| {
                    DATA_ROW_LIMITED
                        .replace("\"size\":4096", &format!("\"size\":{size}"))
                        .replace("QEMU trips (0.46/req)", limits[*n])
                        .replace("55920", ops[*n])
                })
                .collect();
            parse_log(&rows.join("\n")).rows
        };
        let a = run(["QEMU trips (0.46/req)", "guest CPU"], ["55920", "90000"]);
        let b = run(["QEMU trips (0.44/req)", "device"], ["60000", "90000"]);
        assert_eq!(a[0].key(), "data sweep=size size=4096");
        assert_eq!(matched(&a, &b), 2);
        let all = lines(&a, &b);
        assert!(
            all.iter().all(|l| l.a.is_some() && l.b.is_some()),
            "a row only in one run: {all:?}"
        );
        let ops = all
            .iter()
            .find(|l| l.key == "data sweep=size size=4096" && l.metric == "ops_per_s")
            .unwrap();
        assert_eq!((ops.a, ops.b), (Some(55920.0), Some(60000.0)));
        let texts = text_lines(&a, &b);
        assert_eq!(
            texts,
            [
                TextLine {
                    key: "data sweep=size size=4096".into(),
                    field: "limited_by".into(),
                    a: Some("QEMU trips (0.46/req)".into()),
                    b: Some("QEMU trips (0.44/req)".into()),
                },
                TextLine {
                    key: "data sweep=size size=16".into(),
                    field: "limited_by".into(),
                    a: Some("guest CPU".into()),
                    b: Some("device".into()),
                },
            ]
        );
        // Two runs that share no experiment are an error, not a table of "only in" lines.
        let base = crate::output::tests::temp_dir("cmp-none");
        let (a_dir, b_dir) = (base.join("a"), base.join("b"));
        for (dir, row) in [(&a_dir, DATA_ROW_LIMITED), (&b_dir, KICK_ROW)] {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join(output::ROWS_FILE), format!("{row}\n")).unwrap();
        }
        let error = format!(
            "{:#}",
            compare(&a_dir, &b_dir, Some(base.join("out"))).unwrap_err()
        );
        assert!(error.contains("no experiment of"), "{error}");
    }

    #[test]
    fn a_zero_in_a_gives_no_ratio() {
        let a = parse_log(KICK_ROW).rows;
        let all = lines(&a, &a);
        let mb = all.iter().find(|l| l.metric == "mb_per_s").unwrap();
        assert_eq!(mb.ratio(), None);
        assert_eq!(mb.ratio_text(), "n/a (A is 0)");
    }

    #[test]
    fn host_cpu_per_thread_is_compared_too() {
        let with_host = DATA_ROW.replace(
            "\"duration_ms\"",
            "\"host_cpu_pct\":{\"CPU 0/TCG\":50.0},\"duration_ms\"",
        );
        let a = parse_log(&with_host).rows;
        let b = parse_log(&with_host.replace("50.0", "75.0")).rows;
        let all = lines(&a, &b);
        let host = all
            .iter()
            .find(|l| l.metric == "host_cpu_pct[CPU 0/TCG]")
            .unwrap();
        assert_eq!(host.ratio(), Some(1.5));
    }

    #[test]
    fn compare_writes_both_runs_overlaid() {
        let base = crate::output::tests::temp_dir("cmp");
        let (a_dir, b_dir, out) = (base.join("a"), base.join("b"), base.join("out"));
        for (dir, ops) in [(&a_dir, "26318"), (&b_dir, "30000")] {
            fs::create_dir_all(dir).unwrap();
            let row = DATA_ROW.replace("26318", ops);
            fs::write(
                dir.join(output::ROWS_FILE),
                format!("{row}\n{{\"bench\":\"data\",\"si"),
            )
            .unwrap();
        }
        compare(&a_dir, &b_dir, Some(out.clone())).unwrap();
        let md = fs::read_to_string(out.join("compare.md")).unwrap();
        assert!(md.contains("| 26318 | 30000 | 1.14x |"), "{md}");
        assert!(md.contains("truncated bench row"), "problems listed");
        let html = fs::read_to_string(out.join("index.html")).unwrap();
        assert!(html.contains("A ops_per_s") && html.contains("B ops_per_s"));
        let empty = base.join("empty");
        fs::create_dir_all(&empty).unwrap();
        let error = format!("{:#}", compare(&a_dir, &empty, Some(out)).err().unwrap());
        assert!(
            error.contains("run B") && error.contains("holds no results"),
            "{error}"
        );
    }
}
