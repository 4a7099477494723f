//! The kernel command line (`cargo run -- <words>` -> `run-qemu.sh` -> `-append`): words without
//! `=` are the command and its arguments, `key=value` words are switches.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

pub struct Cmdline {
    /// Command and arguments, in order (`test pci`, `bench ctrl`, `kcapi -e ...`).
    pub words: Vec<String>,
    /// `key=value` switches.
    pub switches: Vec<(String, String)>,
}

impl Cmdline {
    pub fn parse(line: &str) -> Cmdline {
        let mut words = Vec::new();
        let mut switches = Vec::new();
        for word in line.split_ascii_whitespace() {
            match word.split_once('=') {
                Some((key, value)) if !key.starts_with('-') => {
                    switches.push((key.to_string(), value.to_string()))
                }
                _ => words.push(word.to_string()),
            }
        }
        Cmdline { words, switches }
    }

    /// The value of switch `key`, if given (the last one wins).
    pub fn switch(&self, key: &str) -> Option<&str> {
        self.switches
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The command word (`test` when none is given).
    pub fn command(&self) -> &str {
        self.words.first().map_or("test", |w| w.as_str())
    }

    /// The words after the command.
    pub fn args(&self) -> Vec<&str> {
        self.words.iter().skip(1).map(|w| w.as_str()).collect()
    }
}
