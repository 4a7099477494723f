//! A result folder: what `run` writes and `compare` reads back.
//!
//! - `rows.jsonl`: the bench rows, one JSON line each, as the kernel printed them plus
//!   `host_cpu_pct` (QEMU's CPU per thread over the point);
//! - `serial.log`: everything the kernel printed; `qemu.log`: run-qemu.sh's stderr;
//! - `meta.json`: where it ran (commit, machine, QEMU, kernel words);
//! - `index.html` (figures with their numbers), `summary.md` (tables), `figures/*.svg`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use crate::figures::{self, Figure, Run};
use crate::render;
use crate::rows::{self, Row};

pub const ROWS_FILE: &str = "rows.jsonl";
pub const META_FILE: &str = "meta.json";

/// What a folder (or a saved serial log) holds.
pub struct Results {
    pub source: PathBuf,
    pub meta: Map<String, Value>,
    pub rows: Vec<Row>,
    /// Lines that could not be read, already prefixed with the file they came from.
    pub problems: Vec<String>,
}

/// Reads a result folder, or a serial log saved from `cargo run -- bench > file`. A folder
/// without rows is an error that says what to run; bad lines are problems, not errors.
pub fn load(path: &Path) -> Result<Results> {
    let (rows_path, meta) = if path.is_dir() {
        let rows_path = path.join(ROWS_FILE);
        if !rows_path.is_file() {
            bail!(
                "{} holds no results (no {ROWS_FILE}); make one with `cargo results run --out {} -- bench`",
                path.display(),
                path.display()
            );
        }
        let meta = fs::read_to_string(path.join(META_FILE))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        (rows_path, meta)
    } else if path.is_file() {
        (path.to_path_buf(), Map::new())
    } else {
        bail!("{}: no such result folder or log file", path.display());
    };
    let text = fs::read_to_string(&rows_path)
        .with_context(|| format!("reading {}", rows_path.display()))?;
    let parsed = rows::parse_log(&text);
    let mut problems: Vec<String> = parsed
        .problems
        .into_iter()
        .map(|p| format!("{}: {p}", rows_path.display()))
        .collect();
    if parsed.rows.is_empty() {
        problems.push(format!("{}: no bench rows", rows_path.display()));
    }
    Ok(Results {
        source: path.to_path_buf(),
        meta,
        rows: parsed.rows,
        problems,
    })
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A file-name-safe form of a title.
pub fn slug(text: &str) -> String {
    let mut slug = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.trim_matches('-').to_string()
}

/// A meta value as text ("" when absent).
pub fn meta_text(meta: &Map<String, Value>, key: &str) -> String {
    match meta.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The order in which `summary.md` and `index.html` show meta fields.
pub const META_KEYS: &[&str] = &[
    "date",
    "commit",
    "words",
    "kernel",
    "host",
    "host_cpus",
    "host_kernel",
    "qemu",
    "qemu_command",
    "environment",
    "exit",
];

fn html_meta(out: &mut String, meta: &Map<String, Value>) {
    out.push_str("<table class=\"meta\">\n");
    for key in META_KEYS {
        let value = meta_text(meta, key);
        if !value.is_empty() {
            let _ = writeln!(
                out,
                "<tr><th>{key}</th><td><code>{}</code></td></tr>",
                escape(&value)
            );
        }
    }
    out.push_str("</table>\n");
}

fn html_table(out: &mut String, table: &[Vec<String>]) {
    let Some((header, body)) = table.split_first() else {
        return;
    };
    out.push_str("<table class=\"figure-data\">\n<tr>");
    for cell in header {
        let _ = write!(out, "<th>{}</th>", escape(cell));
    }
    out.push_str("</tr>\n");
    for line in body {
        out.push_str("<tr>");
        for cell in line {
            let _ = write!(out, "<td>{}</td>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1600px}svg{max-width:100%;height:auto}\
figure{display:inline-block;vertical-align:top;margin:0 1em 1.5em 0}\
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}\
table.meta td,table.meta th{text-align:left}.problems{color:#a00}";

/// Renders every figure; a figure that fails to render is a problem, the rest still render.
pub fn render_figures(figures: &[Figure], problems: &mut Vec<String>) -> Vec<(String, String)> {
    let mut rendered = Vec::new();
    for (i, figure) in figures.iter().enumerate() {
        let name = format!("{:02}-{}.svg", i + 1, slug(&figure.title));
        match render::svg(figure) {
            Ok(svg) => rendered.push((name, svg)),
            Err(e) => problems.push(format!("figure \"{}\" not drawn: {e}", figure.title)),
        }
    }
    rendered
}

/// Writes `index.html` and `figures/*.svg` for `figures` into `dir`.
pub fn write_html(
    dir: &Path,
    title: &str,
    metas: &[(&str, &Map<String, Value>)],
    figures: &[Figure],
    problems: &mut Vec<String>,
) -> Result<PathBuf> {
    let rendered = render_figures(figures, problems);
    let figure_dir = dir.join("figures");
    fs::create_dir_all(&figure_dir)
        .with_context(|| format!("creating {}", figure_dir.display()))?;
    for (name, svg) in &rendered {
        fs::write(figure_dir.join(name), svg)
            .with_context(|| format!("writing {}", figure_dir.join(name).display()))?;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>",
        t = escape(title)
    );
    for (name, meta) in metas {
        if !name.is_empty() {
            let _ = writeln!(out, "<h3>{}</h3>", escape(name));
        }
        html_meta(&mut out, meta);
    }
    if !problems.is_empty() {
        out.push_str("<h2>Problems</h2>\n<ul class=\"problems\">\n");
        for problem in problems.iter() {
            let _ = writeln!(out, "<li>{}</li>", escape(problem));
        }
        out.push_str("</ul>\n");
    }
    let mut bench = String::new();
    for (i, figure) in figures.iter().enumerate() {
        if figure.bench != bench {
            bench = figure.bench.clone();
            let _ = writeln!(
                out,
                "<h2 id=\"{}\">bench {}</h2>",
                escape(&bench),
                escape(&bench)
            );
        }
        let name = format!("{:02}-{}.svg", i + 1, slug(&figure.title));
        let _ = writeln!(out, "<figure id=\"{}\">", escape(&slug(&figure.title)));
        if let Some((_, svg)) = rendered.iter().find(|(n, _)| *n == name) {
            out.push_str(svg);
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "<figcaption>{} (<a href=\"figures/{name}\">svg</a>)</figcaption>\n<details><summary>numbers</summary>",
            escape(&figure.title)
        );
        html_table(&mut out, &figure.table);
        out.push_str("</details>\n</figure>\n");
    }
    out.push_str("</body></html>\n");
    let path = dir.join("index.html");
    fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Markdown for one run's rows: per bench, one table with its key fields and metrics.
pub fn markdown_tables(rows: &[Row]) -> String {
    let mut out = String::new();
    for bench in rows::bench_names(rows) {
        let bench_rows: Vec<&Row> = rows.iter().filter(|r| r.bench == bench).collect();
        let mut columns: Vec<String> = Vec::new();
        for row in &bench_rows {
            for name in row
                .key_fields()
                .into_iter()
                .chain(row.text_metric_names())
                .chain(row.metric_names())
            {
                if !columns.contains(&name) {
                    columns.push(name);
                }
            }
        }
        let has_busy = bench_rows.iter().any(|r| r.numbers("busy_pct").is_some());
        let has_host = bench_rows.iter().any(|r| !r.host_cpu().is_empty());
        let _ = writeln!(out, "### bench {bench}\n");
        let mut header: Vec<String> = columns
            .iter()
            .map(|c| {
                let unit = bench_rows
                    .iter()
                    .map(|r| r.unit(c))
                    .find(|u| !u.is_empty())
                    .unwrap_or_default();
                if unit.is_empty() {
                    c.clone()
                } else {
                    format!("{c} ({unit})")
                }
            })
            .collect();
        if has_busy {
            header.push("busy per CPU (%)".to_string());
        }
        if has_host {
            header.push("QEMU host CPU per thread (%)".to_string());
        }
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for row in &bench_rows {
            let mut cells: Vec<String> = columns
                .iter()
                .map(|c| row.text(c).unwrap_or_default())
                .collect();
            if has_busy {
                let busy = row.numbers("busy_pct").unwrap_or_default();
                cells.push(
                    busy.iter()
                        .map(|b| figures::format_value(*b))
                        .collect::<Vec<_>>()
                        .join(" / "),
                );
            }
            if has_host {
                cells.push(
                    row.host_cpu()
                        .iter()
                        .map(|(name, pct)| format!("{name} {pct:.1}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }
    out
}

/// Markdown lines for a meta map.
pub fn markdown_meta(meta: &Map<String, Value>) -> String {
    let mut out = String::new();
    for key in META_KEYS {
        let value = meta_text(meta, key);
        if !value.is_empty() {
            let _ = writeln!(out, "- {key}: `{value}`");
        }
    }
    out
}

/// Writes a single run's report (rows, meta, figures, summary) into `dir`.
pub fn write_run_report(
    dir: &Path,
    meta: &Map<String, Value>,
    rows: &[Row],
    problems: &mut Vec<String>,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let jsonl: String = rows.iter().map(|r| r.to_json_line() + "\n").collect();
    fs::write(dir.join(ROWS_FILE), jsonl).context("writing rows.jsonl")?;
    fs::write(
        dir.join(META_FILE),
        serde_json::to_string_pretty(meta).context("meta.json")? + "\n",
    )
    .context("writing meta.json")?;
    if rows.is_empty() {
        problems.push("the run printed no bench rows".to_string());
    }
    let figures = figures::build(&[Run { name: "", rows }]);
    let index = write_html(
        dir,
        "vcrypt bench report",
        &[("", meta)],
        &figures,
        problems,
    )?;
    let mut summary = String::from("# vcrypt bench report\n\n");
    summary.push_str(&markdown_meta(meta));
    summary.push('\n');
    summary.push_str(&markdown_tables(rows));
    if !problems.is_empty() {
        summary.push_str("## Problems\n\n");
        for problem in problems.iter() {
            let _ = writeln!(summary, "- {problem}");
        }
    }
    fs::write(dir.join("summary.md"), summary).context("writing summary.md")?;
    Ok(index)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::samples::*;

    /// A scratch folder, removed when dropped (tests leave nothing behind).
    pub(crate) struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    impl std::ops::Deref for Scratch {
        type Target = PathBuf;
        fn deref(&self) -> &PathBuf {
            &self.0
        }
    }

    pub(crate) fn temp_dir(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vcrypt-report-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    #[test]
    fn a_report_holds_every_figure_with_the_runs_numbers() {
        let dir = temp_dir("report");
        let parsed = rows::parse_log(&format!("{DATA_ROW}\n{CTRL_ROW}\n{KICK_ROW}\n"));
        let mut problems = Vec::new();
        let mut meta = Map::new();
        meta.insert("commit".into(), "abc123".into());
        let index = write_run_report(&dir, &meta, &parsed.rows, &mut problems).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        let html = fs::read_to_string(index).unwrap();
        assert!(
            html.contains("<td>26318</td>"),
            "data ops/s in a figure's numbers"
        );
        assert!(html.contains("<h2 id=\"kick\">bench kick</h2>"));
        assert_eq!(
            html.matches("<svg").count(),
            html.matches("<figure ").count()
        );
        let summary = fs::read_to_string(dir.join("summary.md")).unwrap();
        assert!(summary.contains("- commit: `abc123`"));
        assert!(summary.contains("| mode | workers (tasks) |"), "{summary}");
        assert!(fs::read_dir(dir.join("figures")).unwrap().count() > 5);
        let back = load(&dir).unwrap();
        assert_eq!(back.rows, parsed.rows);
        assert_eq!(meta_text(&back.meta, "commit"), "abc123");
    }

    #[test]
    fn a_folder_without_results_says_what_to_run() {
        let dir = temp_dir("empty");
        let error = load(&dir).err().unwrap().to_string();
        assert!(error.contains("holds no results"), "{error}");
        assert!(error.contains("cargo results run"));
        assert!(load(&dir.join("nowhere")).is_err());
    }

    #[test]
    fn bad_lines_are_problems_and_the_rest_still_loads() {
        let dir = temp_dir("bad");
        let truncated = &KICK_ROW[..40];
        fs::write(dir.join(ROWS_FILE), format!("{DATA_ROW}\n{truncated}\n")).unwrap();
        let results = load(&dir).unwrap();
        assert_eq!(results.rows.len(), 1);
        assert_eq!(results.problems.len(), 1);
        assert!(results.problems[0].contains("line 2: truncated bench row"));
    }

    #[test]
    fn html_text_is_escaped_and_slugs_are_file_names() {
        assert_eq!(escape("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
        assert_eq!(
            slug("data: p50_us, p99_us against size"),
            "data-p50-us-p99-us-against-size"
        );
    }
}
