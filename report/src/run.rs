//! `cargo results run [--out DIR] -- <kernel words>`: boots the kernel through `cargo run` (so
//! run-qemu.sh and its VCRYPT_* variables apply), follows its serial output, samples QEMU's
//! threads at each bench point and writes the report.
//!
//! Point boundaries come from the kernel's own lines: `bench <name>: point i/n: ...` before a
//! point and the JSON row after it. QEMU's CPU per thread between the two is stored in the row
//! as `host_cpu_pct`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use std::{fs, thread};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use crate::host_cpu::{self, Snapshot};
use crate::output;
use crate::rows::{self, Row};

/// The VCRYPT_* variables run-qemu.sh reads, recorded with the run.
const RUN_VARIABLES: &[&str] = &[
    "VCRYPT_SMP",
    "VCRYPT_MEM",
    "VCRYPT_DEVICES",
    "VCRYPT_ACCEL",
    "VCRYPT_TIMEOUT",
    "VCRYPT_VECTORS",
    "QEMU",
];

/// `bench data: point 3/16: 4096 B, 16 in flight ...` as (bench, "3/16", what).
pub fn parse_progress(line: &str) -> Option<(&str, &str, &str)> {
    let rest = line.strip_prefix("bench ")?;
    let (bench, rest) = rest.split_once(": point ")?;
    let (position, what) = rest.split_once(": ")?;
    if bench.contains(' ') || !position.contains('/') {
        return None;
    }
    Some((bench, position, what.trim_end_matches(" ...")))
}

/// The workspace root: this crate lives in `<root>/report`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Seconds since the Unix epoch as `YYYYMMDD-HHMMSS` (UTC), for folder names and the record.
pub fn utc_stamp(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let secs = unix_seconds % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian, 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn command_line(program: &str, args: &[&str], dir: &Path) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Where the run happens: commit, host, QEMU. Missing tools leave fields empty.
fn machine_meta(root: &Path, words: &[String]) -> Map<String, Value> {
    let mut meta = Map::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    meta.insert("date".into(), format!("{} UTC", utc_stamp(now)).into());
    let commit = command_line("git", &["rev-parse", "--short", "HEAD"], root);
    let dirty = !command_line(
        "git",
        &["status", "--porcelain", "--untracked-files=no"],
        root,
    )
    .is_empty();
    let subject = command_line("git", &["log", "-1", "--format=%s"], root);
    meta.insert(
        "commit".into(),
        format!(
            "{commit}{} {subject}",
            if dirty { " (modified)" } else { "" }
        )
        .into(),
    );
    meta.insert("words".into(), words.join(" ").into());
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    meta.insert("host".into(), model.into());
    meta.insert(
        "host_cpus".into(),
        thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
            .into(),
    );
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    meta.insert("host_kernel".into(), release.trim().to_string().into());
    let qemu = std::env::var("QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let version = command_line(&qemu, &["--version"], root);
    meta.insert(
        "qemu".into(),
        version.lines().next().unwrap_or("").to_string().into(),
    );
    let environment: Vec<String> = RUN_VARIABLES
        .iter()
        .filter_map(|v| std::env::var(v).ok().map(|value| format!("{v}={value}")))
        .collect();
    meta.insert("environment".into(), environment.join(" ").into());
    meta
}

/// Follows QEMU's threads: the pid comes from the pidfile run-qemu.sh asks QEMU to write.
struct QemuSampler {
    pidfile: PathBuf,
    pid: Option<u32>,
    clock: Instant,
    point_start: Option<Snapshot>,
    warned: bool,
}

impl QemuSampler {
    fn sample(&mut self) -> Option<Snapshot> {
        if self.pid.is_none() {
            self.pid = fs::read_to_string(&self.pidfile)
                .ok()
                .and_then(|text| text.trim().parse().ok());
        }
        let wall_ns = self.clock.elapsed().as_nanos() as u64;
        let result = self
            .pid
            .map(|pid| host_cpu::snapshot(Path::new("/proc"), pid, wall_ns));
        match result {
            Some(Ok(snapshot)) => Some(snapshot),
            _ => {
                if !self.warned {
                    eprintln!(
                        "report: cannot read QEMU's threads (pidfile {}): rows carry no host CPU",
                        self.pidfile.display()
                    );
                    self.warned = true;
                }
                None
            }
        }
    }
}

/// Runs the kernel with `words` and writes the report into `out` (or a new folder under
/// target/report). Returns the folder; fails after writing the report if the run failed.
pub fn run(out: Option<PathBuf>, words: &[String]) -> Result<PathBuf> {
    let root = workspace_root();
    let meta_now = machine_meta(&root, words);
    let dir = match out {
        Some(dir) => dir,
        None => root
            .join("target/report")
            .join(output::meta_text(&meta_now, "date").replace(" UTC", "")),
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().unwrap_or(dir);
    let pidfile = dir.join("qemu.pid");
    let _ = fs::remove_file(&pidfile);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!(
        "report: building and booting the kernel: cargo run -- {}",
        words.join(" ")
    );
    let mut child = Command::new(&cargo)
        .args(["run", "--quiet", "--"])
        .args(words)
        .current_dir(&root)
        .env("VCRYPT_QEMU_PIDFILE", &pidfile)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cargo} run"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let qemu_log_path = dir.join("qemu.log");
    // run-qemu.sh's stderr: its QEMU command line and its one-line verdict.
    let stderr_reader = thread::spawn(move || -> (String, String) {
        let mut command = String::new();
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(cmd) = line.strip_prefix("run-qemu.sh: ") {
                if cmd.starts_with("qemu") || cmd.contains("qemu-system") {
                    command = cmd.to_string();
                } else {
                    eprintln!("{line}");
                }
            } else {
                eprintln!("{line}");
            }
            all.push_str(&line);
            all.push('\n');
        }
        (command, all)
    });
    let mut serial = fs::File::create(dir.join("serial.log")).context("creating serial.log")?;
    let mut sampler = QemuSampler {
        pidfile: pidfile.clone(),
        pid: None,
        clock: Instant::now(),
        point_start: None,
        warned: false,
    };
    let mut rows_read: Vec<Row> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut kernel_header = String::new();
    let stdout = child.stdout.take().context("no stdout pipe")?;
    for (number, line) in BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .enumerate()
    {
        writeln!(serial, "{line}").context("writing serial.log")?;
        if let Some((bench, position, what)) = parse_progress(&line) {
            eprintln!("report: {bench} {position}: {what}");
            sampler.point_start = sampler.sample();
        } else if rows::looks_like_row(&line) {
            match rows::parse_row(&line) {
                Ok(mut row) => {
                    if let (Some(start), Some(end)) = (sampler.point_start.take(), sampler.sample())
                    {
                        let usage: Map<String, Value> = host_cpu::usage_by_name(&start, &end)
                            .into_iter()
                            .map(|(name, pct)| (name, Value::from(pct)))
                            .collect();
                        row.fields
                            .insert("host_cpu_pct".into(), Value::Object(usage));
                    }
                    rows_read.push(row);
                }
                Err(e) => problems.push(format!("serial line {}: {e}", number + 1)),
            }
        } else if line.starts_with("bench: ") && kernel_header.is_empty() {
            kernel_header = line.trim_start_matches("bench: ").to_string();
            eprintln!("report: {kernel_header}");
        } else if line.starts_with("error") || line.contains("FAILED") || line.contains("panic") {
            eprintln!("kernel: {line}");
        }
    }
    let status = child.wait().context("waiting for cargo run")?;
    let (qemu_command, qemu_log) = stderr_reader.join().unwrap_or_default();
    fs::write(&qemu_log_path, qemu_log).context("writing qemu.log")?;
    let _ = fs::remove_file(&pidfile);
    rows::number_rows(&mut rows_read);
    let mut meta = meta_now;
    meta.insert("kernel".into(), kernel_header.into());
    meta.insert("qemu_command".into(), qemu_command.into());
    let verdict = if status.success() {
        "pass".to_string()
    } else {
        format!("FAILED ({status})")
    };
    meta.insert("exit".into(), verdict.clone().into());
    if !status.success() {
        problems.push(format!(
            "the kernel run failed ({status}); see serial.log and qemu.log"
        ));
    }
    let index = output::write_run_report(&dir, &meta, &rows_read, &mut problems)?;
    for problem in &problems {
        eprintln!("report: problem: {problem}");
    }
    eprintln!(
        "report: {} rows, {} problems; open {}",
        rows_read.len(),
        problems.len(),
        index.display()
    );
    println!("{}", dir.display());
    if !status.success() {
        bail!(
            "the kernel run failed; the report of what it printed is in {}",
            dir.display()
        );
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_mark_points() {
        assert_eq!(
            parse_progress("bench data: point 3/16: 4096 B, 16 in flight ..."),
            Some(("data", "3/16", "4096 B, 16 in flight"))
        );
        assert_eq!(parse_progress("bench: device crypto0, 2 CPUs"), None);
        assert_eq!(parse_progress("bench data: AES-CBC throughput"), None);
    }

    #[test]
    fn utc_stamps_are_civil_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(1_700_000_000), "20231114-221320");
    }

    #[test]
    fn the_workspace_root_holds_run_qemu() {
        assert!(workspace_root().join("run-qemu.sh").is_file());
    }
}
