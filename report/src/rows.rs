//! Bench rows: the `{"bench":...}` JSON lines the kernel prints, read back from a serial log.
//!
//! The tool keeps no list of benches. A row says how to draw it (`"plot"`: the x field, the y
//! fields, the fields that split lines, the log2 histogram fields) and what its fields measure
//! (`"units"`). Rows without that declaration (older kernels, a bench that has not declared it
//! yet) still load: they are drawn against their position in the run.

use serde_json::{Map, Number, Value};

/// Fields that describe a row rather than measure something.
const DECLARATION_FIELDS: &[&str] = &["bench", "plot", "units", "host_cpu_pct"];

/// One bench result row, with its fields in the order the kernel printed them.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub bench: String,
    pub fields: Map<String, Value>,
    /// Position among the rows of the same bench in its run (1-based); the x axis of rows that
    /// declare none.
    pub index_in_bench: usize,
}

/// Rows read from a log, and what could not be read, one readable sentence per problem.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rows: Vec<Row>,
    pub problems: Vec<String>,
}

/// Whether a serial line is meant as a bench row: the kernel prints them as one JSON object
/// starting with its `"bench"` key; anything else is console text.
pub fn looks_like_row(line: &str) -> bool {
    line.trim_start().starts_with("{\"bench\"")
}

/// Parses one line meant as a bench row (see [`looks_like_row`]).
pub fn parse_row(line: &str) -> Result<Row, String> {
    let value: Value = serde_json::from_str(line.trim()).map_err(|e| {
        if e.is_eof() {
            format!("truncated bench row (the line ends inside the JSON): {e}")
        } else {
            format!("malformed bench row: {e}")
        }
    })?;
    let Value::Object(fields) = value else {
        return Err("a bench row must be a JSON object".to_string());
    };
    let bench = match fields.get("bench") {
        Some(Value::String(name)) if !name.is_empty() => name.clone(),
        _ => return Err("a bench row needs a non-empty string \"bench\"".to_string()),
    };
    Ok(Row {
        bench,
        fields,
        index_in_bench: 0,
    })
}

/// Reads every bench row of a log. Console text is skipped; a row that does not parse is
/// reported with its line number and the rest still load.
pub fn parse_log(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for (number, line) in text.lines().enumerate() {
        if !looks_like_row(line) {
            continue;
        }
        match parse_row(line) {
            Ok(row) => parsed.rows.push(row),
            Err(e) => parsed.problems.push(format!("line {}: {e}", number + 1)),
        }
    }
    number_rows(&mut parsed.rows);
    parsed
}

/// Sets each row's position among the rows of its bench.
pub fn number_rows(rows: &mut [Row]) {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for row in rows {
        let count = match seen.iter_mut().find(|(bench, _)| *bench == row.bench) {
            Some((_, count)) => count,
            None => {
                seen.push((row.bench.clone(), 0));
                &mut seen.last_mut().expect("just pushed").1
            }
        };
        *count += 1;
        row.index_in_bench = *count;
    }
}

/// The names of the benches in `rows`, in order of first appearance.
pub fn bench_names(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for row in rows {
        if !names.contains(&row.bench) {
            names.push(row.bench.clone());
        }
    }
    names
}

/// A JSON number as the kernel wrote it (integers stay integers) and as a float.
pub fn number_text(number: &Number) -> String {
    number.to_string()
}

impl Row {
    fn plot(&self) -> Option<&Map<String, Value>> {
        self.fields.get("plot")?.as_object()
    }

    fn plot_names(&self, key: &str) -> Vec<String> {
        self.plot()
            .and_then(|plot| plot.get(key))
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|name| self.fields.contains_key(*name))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether the row declares how to draw it.
    pub fn declares_plot(&self) -> bool {
        self.x_field().is_some()
    }

    /// The declared x field, when it names a number in the row.
    pub fn x_field(&self) -> Option<String> {
        let x = self.plot()?.get("x")?.as_str()?;
        self.number(x).map(|_| x.to_string())
    }

    /// The x value: the declared field, or the row's position when it declares none.
    pub fn x_value(&self) -> f64 {
        match self.x_field() {
            Some(x) => self.number(&x).unwrap_or(0.0),
            None => self.index_in_bench as f64,
        }
    }

    /// The fields to draw against x: the declared ones, or every plain number in the row.
    pub fn y_fields(&self) -> Vec<String> {
        if self.declares_plot() {
            return self
                .plot_names("y")
                .into_iter()
                .filter(|name| self.number(name).is_some())
                .collect();
        }
        self.metric_names()
    }

    /// The fields whose values split the lines of a figure (e.g. `mode`).
    pub fn series_fields(&self) -> Vec<String> {
        self.plot_names("series")
    }

    /// Log2 histogram fields: bucket `k` counts values in `2^k .. 2^(k+1)-1` (bucket 0: 0-1).
    pub fn hist_fields(&self) -> Vec<String> {
        self.plot_names("hist")
            .into_iter()
            .filter(|name| self.numbers(name).is_some())
            .collect()
    }

    /// The declared unit of a field, or "" when there is none.
    pub fn unit(&self, field: &str) -> String {
        self.fields
            .get("units")
            .and_then(|units| units.get(field))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    /// A numeric field as a float.
    pub fn number(&self, field: &str) -> Option<f64> {
        self.fields.get(field)?.as_f64()
    }

    /// A field as the kernel wrote it, for tables.
    pub fn text(&self, field: &str) -> Option<String> {
        match self.fields.get(field)? {
            Value::Number(n) => Some(number_text(n)),
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    }

    /// A list of numbers (a histogram, busy per CPU).
    pub fn numbers(&self, field: &str) -> Option<Vec<f64>> {
        let list = self.fields.get(field)?.as_array()?;
        list.iter().map(Value::as_f64).collect()
    }

    /// Every plain numeric field that measures something: not the declared x or series fields.
    pub fn metric_names(&self) -> Vec<String> {
        let keys = self.key_fields();
        self.fields
            .iter()
            .filter(|(name, value)| {
                value.is_number()
                    && !keys.contains(name)
                    && !DECLARATION_FIELDS.contains(&name.as_str())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The fields naming the point a row measured. A row that declares its plot is identified by
    /// its declaration: the x field and the series fields (bench data: `sweep` and `size` or
    /// `in_flight`), in the row's order; its other text fields (`limited_by`) are measured and
    /// never part of the key. A row without a declaration: its text fields (mode, sweep). Two
    /// runs' rows with the same key are the same experiment.
    pub fn key_fields(&self) -> Vec<String> {
        if self.declares_plot() {
            let declared: Vec<String> = self
                .x_field()
                .into_iter()
                .chain(self.series_fields())
                .collect();
            return self
                .fields
                .keys()
                .filter(|name| declared.contains(name))
                .cloned()
                .collect();
        }
        self.fields
            .iter()
            .filter(|(name, value)| {
                value.is_string() && !DECLARATION_FIELDS.contains(&name.as_str())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Text fields that measure something (bench data's `limited_by`): every text field that is
    /// neither a key field nor a declaration. Compared between runs, never matched on.
    pub fn text_metric_names(&self) -> Vec<String> {
        let keys = self.key_fields();
        self.fields
            .iter()
            .filter(|(name, value)| {
                value.is_string()
                    && !keys.contains(name)
                    && !DECLARATION_FIELDS.contains(&name.as_str())
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// A stable identity for comparing runs: bench plus `field=value` for every key field, or
    /// the row's position when it declares no x.
    pub fn key(&self) -> String {
        let mut parts = vec![self.bench.clone()];
        for field in self.key_fields() {
            parts.push(format!("{field}={}", self.text(&field).unwrap_or_default()));
        }
        if !self.declares_plot() {
            parts.push(format!("#{}", self.index_in_bench));
        }
        parts.join(" ")
    }

    /// A short human label for the row inside its bench: series values, then x with its unit.
    pub fn label(&self) -> String {
        let mut parts: Vec<String> = self
            .series_fields()
            .iter()
            .filter_map(|field| self.text(field))
            .collect();
        match self.x_field() {
            Some(x) => {
                let unit = self.unit(&x);
                let value = self.text(&x).unwrap_or_default();
                parts.push(if unit.is_empty() {
                    format!("{x}={value}")
                } else {
                    format!("{value} {unit}")
                });
            }
            None => parts.push(format!("#{}", self.index_in_bench)),
        }
        parts.join(", ")
    }

    /// The series a row belongs to in a line figure: its series field values ("" for none).
    pub fn series_label(&self) -> String {
        self.series_fields()
            .iter()
            .filter_map(|field| self.text(field))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Host CPU per QEMU thread name in percent of one host CPU, when it was sampled.
    pub fn host_cpu(&self) -> Vec<(String, f64)> {
        self.fields
            .get("host_cpu_pct")
            .and_then(Value::as_object)
            .map(|threads| {
                threads
                    .iter()
                    .filter_map(|(name, pct)| Some((name.clone(), pct.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The row as one JSON line.
    pub fn to_json_line(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::*;

    #[test]
    fn every_bench_row_shape_parses_with_its_axes_and_units() {
        let data = parse_row(DATA_ROW).unwrap();
        assert_eq!(data.bench, "data");
        assert_eq!(data.x_field().as_deref(), Some("size"));
        assert_eq!(data.x_value(), 4096.0);
        assert_eq!(
            data.y_fields(),
            ["ops_per_s", "mb_per_s", "p50_us", "p99_us"]
        );
        assert_eq!(data.unit("mb_per_s"), "MB/s");
        assert_eq!(data.label(), "4096 B");
        assert_eq!(data.numbers("busy_pct"), Some(vec![80.1, 83.5]));

        let ctrl = parse_row(CTRL_ROW).unwrap();
        assert_eq!(ctrl.series_fields(), ["mode"]);
        assert_eq!(ctrl.hist_fields(), ["destroy_latency_log2_us"]);
        assert_eq!(ctrl.label(), "poll, 2 tasks");
        assert_eq!(ctrl.key(), "ctrl mode=poll workers=2");

        let kick = parse_row(KICK_ROW).unwrap();
        assert_eq!(kick.key(), "kick mode=locked size=16");
        assert_eq!(kick.text("wait_total_ns").as_deref(), Some("102470520"));
        assert!(kick.metric_names().contains(&"hold_max_ns".to_string()));
        assert!(!kick.metric_names().contains(&"size".to_string()));
    }

    #[test]
    fn a_row_without_a_plot_declaration_draws_against_its_position() {
        let mut parsed = parse_log(&format!("{UNDECLARED_ROW}\n{UNDECLARED_ROW}\n"));
        assert!(parsed.problems.is_empty());
        let row = parsed.rows.remove(1);
        assert!(!row.declares_plot());
        assert_eq!(row.x_value(), 2.0);
        assert_eq!(row.y_fields(), ["ops_per_s", "latency_us"]);
        assert_eq!(row.key(), "future mode=x #2");
    }

    #[test]
    fn console_text_is_skipped_and_bad_rows_are_named_by_line() {
        let truncated = &DATA_ROW[..DATA_ROW.len() / 2];
        let log = format!(
            "bench data: point 1/16: 16 B, 16 in flight ...\n{DATA_ROW}\n{truncated}\n\
             {{\"bench\":42}}\n{{\"other\":1}}\nrandom {{\"bench\":\"x\"}}\n{KICK_ROW}\n"
        );
        let parsed = parse_log(&log);
        assert_eq!(parsed.rows.len(), 2, "the two whole rows load");
        assert_eq!(parsed.problems.len(), 2, "{:?}", parsed.problems);
        assert!(parsed.problems[0].starts_with("line 3: truncated bench row"));
        assert!(parsed.problems[1].starts_with("line 4: "));
        assert!(parsed.problems[1].contains("non-empty string \"bench\""));
    }

    #[test]
    fn declarations_naming_missing_fields_are_ignored() {
        let row = parse_row(
            r#"{"bench":"b","n":1,"plot":{"x":"gone","y":["n","missing"],"series":["nope"],"hist":["n"]}}"#,
        )
        .unwrap();
        assert_eq!(row.x_field(), None);
        assert!(row.series_fields().is_empty());
        assert!(row.hist_fields().is_empty(), "a number is not a histogram");
        assert_eq!(row.y_fields(), ["n"]);
    }

    #[test]
    fn rows_are_numbered_within_their_bench() {
        let parsed = parse_log(&format!("{DATA_ROW}\n{KICK_ROW}\n{DATA_ROW}\n"));
        let numbers: Vec<usize> = parsed.rows.iter().map(|r| r.index_in_bench).collect();
        assert_eq!(numbers, [1, 1, 2]);
        assert_eq!(bench_names(&parsed.rows), ["data", "kick"]);
    }
}
