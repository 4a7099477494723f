//! The command line of the host tool: `run`, `compare`, `render`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::{compare, output, run};

const USAGE: &str = "usage:
  cargo results run [--out DIR] -- <kernel words>   boot the kernel (e.g. `-- bench`, `-- bench data dur=200`),
                                                   sample QEMU's threads, write DIR/index.html, summary.md, rows.jsonl
  cargo results compare A B [--out DIR]             two result folders (or saved logs) side by side, with ratios
  cargo results render LOG [--out DIR]              a report from a saved `cargo run -- bench` output
DIR defaults to target/report/<UTC date>; the folder's path is printed last.";

/// Splits `--out DIR` out of `args`; the rest stay in order.
fn take_out(args: &mut Vec<String>) -> Result<Option<PathBuf>> {
    let Some(i) = args.iter().position(|a| a == "--out") else {
        return Ok(None);
    };
    if i + 1 >= args.len() {
        bail!("--out needs a folder");
    }
    let dir = args.remove(i + 1);
    args.remove(i);
    Ok(Some(PathBuf::from(dir)))
}

fn main_result(mut args: Vec<String>) -> Result<()> {
    let Some(command) = args.first().cloned() else {
        bail!("no command\n{USAGE}");
    };
    args.remove(0);
    match command.as_str() {
        "run" => {
            // Everything after `--` is the kernel's; before it, only --out.
            let split = args.iter().position(|a| a == "--");
            let mut words = match split {
                Some(i) => args.split_off(i + 1),
                None => Vec::new(),
            };
            if split.is_some() {
                args.pop();
            } else {
                words = std::mem::take(&mut args);
                let out = take_out(&mut words)?;
                args = out
                    .map(|o| vec!["--out".to_string(), o.display().to_string()])
                    .unwrap_or_default();
            }
            let out = take_out(&mut args)?;
            if let Some(stray) = args.first() {
                bail!("run: unexpected \"{stray}\" before `--`\n{USAGE}");
            }
            if words.is_empty() {
                words.push("bench".to_string());
            }
            run::run(out, &words)?;
        }
        "compare" => {
            let out = take_out(&mut args)?;
            let [a, b] = args.as_slice() else {
                bail!(
                    "compare needs two result folders, got {}\n{USAGE}",
                    args.len()
                );
            };
            compare::compare(&PathBuf::from(a), &PathBuf::from(b), out)?;
        }
        "render" => {
            let out = take_out(&mut args)?;
            let [log] = args.as_slice() else {
                bail!("render needs one log file\n{USAGE}");
            };
            let results = output::load(&PathBuf::from(log))?;
            let dir = out.unwrap_or_else(|| PathBuf::from(log).with_extension("report"));
            let mut problems = results.problems;
            let index =
                output::write_run_report(&dir, &results.meta, &results.rows, &mut problems)?;
            for problem in &problems {
                eprintln!("report: problem: {problem}");
            }
            eprintln!(
                "report: {} rows; open {}",
                results.rows.len(),
                index.display()
            );
            println!("{}", dir.display());
        }
        "help" | "-h" | "--help" => println!("{USAGE}"),
        other => bail!("unknown command \"{other}\"\n{USAGE}"),
    }
    Ok(())
}

pub fn main() -> ExitCode {
    match main_result(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("report: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn out_is_taken_from_anywhere() {
        let mut a = args("x --out d y");
        assert_eq!(take_out(&mut a).unwrap(), Some(PathBuf::from("d")));
        assert_eq!(a, ["x", "y"]);
        assert!(take_out(&mut args("x --out")).is_err());
        assert_eq!(take_out(&mut args("x")).unwrap(), None);
    }

    #[test]
    fn bad_commands_explain_themselves() {
        let error = main_result(args("compare onlyone"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("compare needs two result folders, got 1"));
        assert!(
            main_result(args("frobnicate"))
                .unwrap_err()
                .to_string()
                .contains("unknown command")
        );
        assert!(main_result(Vec::new()).is_err());
        let error = main_result(args("run stray -- bench"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unexpected \"stray\""), "{error}");
    }
}
