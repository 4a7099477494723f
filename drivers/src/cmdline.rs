//! The kernel command line: its format and the one strict parser for every command, option and
//! switch on it. Host-testable (and fuzzed with arbitrary bytes by `proptest`): nothing here can
//! panic on input.
//!
//! # Format
//!
//! The line is a sequence of words separated by ASCII whitespace (space, tab, CR, LF). A word is
//! made of segments written next to each other:
//!
//! - an unquoted segment: any bytes except whitespace and `'`;
//! - a quoted segment: `'...'`, any bytes at all between the quotes, where `''` stands for one `'`.
//!
//! So `''` is the empty word, `'a b'` one word with a space, `'it''s'` is `it's`. This is the
//! encoding `run-qemu.sh` writes (every word quoted, `'` doubled), so any byte string without NUL
//! (which a process argument cannot contain) arrives exactly. Every word must then be UTF-8.
//!
//! A word `key=value` whose key is a lower-case identifier (`[a-z][a-z0-9_]*`) is a switch; every
//! other word is the command (the first) or one of its arguments. A switch must be one of the
//! known ones and may appear once.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::virtio_crypto::cipher::{Cipher, Direction};

/// The longest command line accepted, in bytes (its encoded form). `run-qemu.sh` refuses a longer
/// one before boot with the same number; the kernel refuses one it is handed, never cuts it.
pub const MAX_CMDLINE_BYTES: usize = 65536;

/// The most data one `kcapi` operation may hold, in bytes, after `-d <n>` repeats it (the input
/// and the output are each this large; a small guest's heap may hold less, which the kernel
/// checks before it allocates).
pub const MAX_KCAPI_BYTES: usize = 1 << 20;

/// The largest `-s <bytes>` chunk: one stream request ([`crate::stream::MAX_CHUNK`]).
pub const MAX_KCAPI_CHUNK: usize = crate::stream::MAX_CHUNK;

/// The switches the kernel knows, with the values each takes (for messages).
pub const SWITCHES: &[(&str, &str)] = &[
    ("log", "error|warn|info|debug|trace|off"),
    ("ctrl", "sleep|poll"),
    ("kick", "unlocked|locked"),
    ("unadvertised", "refuse|try"),
    ("dur", "milliseconds per benchmark point"),
    (
        "sweep",
        "size|in_flight|zero_copy (bench data: one sweep only)",
    ),
    ("queues", "percpu|shared"),
    ("chain", "pipelined|serial"),
    ("profile", "off|on"),
    ("event_idx", "on|off"),
    ("reap", "on|off"),
];

/// Why a command line, or a command's arguments, were refused. Each prints as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdlineError {
    TooLong {
        len: usize,
        max: usize,
    },
    UnterminatedQuote {
        at: usize,
    },
    NotUtf8 {
        word: usize,
        shown: String,
    },
    UnknownSwitch {
        word: String,
    },
    RepeatedSwitch {
        key: String,
    },
    /// A switch with a value it does not take.
    BadValue {
        key: &'static str,
        value: String,
        choices: Vec<&'static str>,
    },
    /// kcapi: an option that is not one of kcapi's.
    UnknownOption {
        word: String,
    },
    RepeatedOption {
        option: &'static str,
    },
    MissingValue {
        option: &'static str,
    },
    NotHex {
        option: &'static str,
        value: String,
        at: usize,
    },
    OddHex {
        option: &'static str,
        value: String,
    },
    UnknownCipher {
        name: String,
    },
    BothDirections,
    NotACount {
        option: &'static str,
        value: String,
    },
    /// A count above its limit (or too long to be a number at all).
    TooLarge {
        option: &'static str,
        value: String,
        max: usize,
        unit: &'static str,
    },
    /// `-p` repeated by `-d <n>` holds more than [`MAX_KCAPI_BYTES`].
    DataTooLarge {
        bytes: usize,
        times: usize,
        max: usize,
    },
    /// `-d <n>` or `-s <bytes>` with empty data: the same refusal as a single empty request.
    NoData,
    /// An `xts(aes)` key whose two halves are equal.
    XtsKeyHalvesEqual,
    Missing {
        what: &'static str,
    },
}

/// Like [`shown`] without the quotes when `s` is plain (letters, digits, `_`, `-`, `.`): a
/// switch's value reads as it was typed.
fn shown_bare(s: &str) -> String {
    let plain = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if plain { String::from(s) } else { shown(s) }
}

/// Shows `s` quoted for a message: escaped (no raw control characters) and cut after 64
/// characters with the full length said, so that a message stays one readable line.
pub fn shown(s: &str) -> String {
    const SHOW: usize = 64;
    let count = s.chars().count();
    let text: String = s.chars().take(SHOW).flat_map(char::escape_debug).collect();
    if count > SHOW {
        format!("\"{text}...\" ({count} characters)")
    } else {
        format!("\"{text}\"")
    }
}

fn known_switches() -> String {
    SWITCHES
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmdlineError::TooLong { len, max } => write!(
                f,
                "the command line is {len} bytes; the limit is {max} bytes (nothing was cut: shorten it)"
            ),
            CmdlineError::UnterminatedQuote { at } => write!(
                f,
                "the command line has a quote at byte {at} that is never closed (inside quotes write '' for ')"
            ),
            CmdlineError::NotUtf8 { word, shown } => {
                write!(f, "word {word} is not UTF-8: {shown}")
            }
            CmdlineError::UnknownSwitch { word } => write!(
                f,
                "unknown switch {} (known: {})",
                shown(word),
                known_switches()
            ),
            CmdlineError::RepeatedSwitch { key } => {
                write!(f, "switch {key}= is given more than once")
            }
            CmdlineError::UnknownOption { word } => write!(
                f,
                "unknown option {} (options: -e, -d, -c <cipher>, -k <hex>, -i <hex>, -p <hex>, -d <n>, -s <bytes>; RSA: -x 4 -o <0|1|2|3> -c <pkcs1pad(rsa,hash)> -j <hex key> -p <hex> [-t <hex>])",
                shown(word)
            ),
            CmdlineError::RepeatedOption { option } => {
                write!(f, "{option} is given more than once")
            }
            CmdlineError::MissingValue { option } => write!(f, "{option} needs a value"),
            CmdlineError::NotHex { option, value, at } => write!(
                f,
                "{option}: {} is not hexadecimal (character {at}; hex is pairs of 0-9, a-f, A-F and nothing else)",
                shown(value)
            ),
            CmdlineError::OddHex { option, value } => write!(
                f,
                "{option}: {} has an odd number of hex digits",
                shown(value)
            ),
            CmdlineError::UnknownCipher { name } => write!(
                f,
                "-c: unknown cipher {} (known: cbc(aes), ecb(aes), ctr(aes), xts(aes))",
                shown(name)
            ),
            CmdlineError::BothDirections => write!(f, "give either -e or -d, not both"),
            CmdlineError::NotACount { option, value } => write!(
                f,
                "{option}: {} is not a positive number (decimal digits, at least 1)",
                shown(value)
            ),
            CmdlineError::TooLarge {
                option,
                value,
                max,
                unit,
            } => write!(f, "{option}: {} is too large: at most {max} {unit}", shown(value)),
            CmdlineError::DataTooLarge { bytes, times, max } => write!(
                f,
                "-d {times}: {bytes} bytes of data {times} times is more than one kcapi operation may hold ({max} bytes)"
            ),
            CmdlineError::NoData => f.write_str("the request has no data"),
            CmdlineError::XtsKeyHalvesEqual => f.write_str(
                "-k: the two halves of the xts(aes) key are equal; XTS needs two different keys (a weak key, refused as Linux's xts_verify_key and OpenSSL do)",
            ),
            CmdlineError::Missing { what } => write!(f, "{what}"),
            CmdlineError::BadValue {
                key,
                value,
                choices,
            } => {
                let expected: Vec<String> = choices.iter().map(|c| format!("{key}={c}")).collect();
                let (last, rest) = expected.split_last().map_or(("", &[][..]), |(l, r)| (l.as_str(), r));
                if rest.is_empty() {
                    write!(f, "{key}={}: expected {last}", shown_bare(value))
                } else {
                    write!(f, "{key}={}: expected {} or {last}", shown_bare(value), rest.join(", "))
                }
            }
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Splits `line` into words (the quoting above), byte-exact.
pub fn split_words(line: &[u8]) -> Result<Vec<Vec<u8>>, CmdlineError> {
    if line.len() > MAX_CMDLINE_BYTES {
        return Err(CmdlineError::TooLong {
            len: line.len(),
            max: MAX_CMDLINE_BYTES,
        });
    }
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if is_space(line[i]) {
            i += 1;
            continue;
        }
        let mut word = Vec::new();
        while i < line.len() && !is_space(line[i]) {
            if line[i] == b'\'' {
                let open = i;
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(CmdlineError::UnterminatedQuote { at: open }),
                        Some(b'\'') if line.get(i + 1) == Some(&b'\'') => {
                            word.push(b'\'');
                            i += 2;
                        }
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(&b) => {
                            word.push(b);
                            i += 1;
                        }
                    }
                }
            } else {
                word.push(line[i]);
                i += 1;
            }
        }
        words.push(word);
    }
    Ok(words)
}

/// Quotes `words` the way `run-qemu.sh` does: the inverse of [`split_words`].
pub fn quote_words<W: AsRef<[u8]>>(words: &[W]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, w) in words.iter().enumerate() {
        if n > 0 {
            out.push(b' ');
        }
        out.push(b'\'');
        for &b in w.as_ref() {
            if b == b'\'' {
                out.push(b'\'');
            }
            out.push(b);
        }
        out.push(b'\'');
    }
    out
}

fn is_switch_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// Command and arguments, in order (`test pci`, `bench ctrl`, `kcapi -e ...`).
    pub words: Vec<String>,
    /// `key=value` switches, each key once and known.
    pub switches: Vec<(String, String)>,
}

impl Cmdline {
    /// Parses a whole command line (the bytes the loader handed over).
    pub fn parse(line: &[u8]) -> Result<Cmdline, CmdlineError> {
        let mut words = Vec::new();
        let mut switches: Vec<(String, String)> = Vec::new();
        for (n, raw) in split_words(line)?.into_iter().enumerate() {
            let word = String::from_utf8(raw).map_err(|e| CmdlineError::NotUtf8 {
                word: n + 1,
                shown: e
                    .as_bytes()
                    .iter()
                    .flat_map(|b| core::ascii::escape_default(*b))
                    .map(char::from)
                    .take(80)
                    .collect(),
            })?;
            match word.split_once('=') {
                Some((key, value)) if is_switch_key(key) => {
                    if !SWITCHES.iter().any(|(k, _)| *k == key) {
                        return Err(CmdlineError::UnknownSwitch { word });
                    }
                    if switches.iter().any(|(k, _)| k == key) {
                        return Err(CmdlineError::RepeatedSwitch {
                            key: key.to_string(),
                        });
                    }
                    switches.push((key.to_string(), value.to_string()));
                }
                _ => words.push(word),
            }
        }
        Ok(Cmdline { words, switches })
    }

    /// The value of switch `key`, if given.
    pub fn switch(&self, key: &str) -> Option<&str> {
        self.switches
            .iter()
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

/// Parses hex: pairs of `[0-9a-fA-F]` and nothing else (no sign, no spaces, no `0x`). The empty
/// string is zero bytes. `option` names the option in the error.
pub fn parse_hex(option: &'static str, text: &str) -> Result<Vec<u8>, CmdlineError> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    if let Some(at) = text.chars().position(|c| !c.is_ascii_hexdigit()) {
        return Err(CmdlineError::NotHex {
            option,
            value: text.to_string(),
            at,
        });
    }
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(CmdlineError::OddHex {
            option,
            value: text.to_string(),
        });
    }
    bytes
        .chunks_exact(2)
        .map(|pair| match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err(CmdlineError::NotHex {
                option,
                value: text.to_string(),
                at: 0,
            }),
        })
        .collect()
}

/// One `kcapi` operation, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KcapiRequest {
    pub direction: Direction,
    pub cipher: Cipher,
    pub key: Vec<u8>,
    /// Empty when `-i` is not given.
    pub iv: Vec<u8>,
    pub data: Vec<u8>,
    /// `-d <n>`: the data n times, as n consecutive chunks of one chained stream.
    pub repeat: Option<usize>,
    /// `-s <bytes>`: the data split into chunks of this size, of one chained stream.
    pub chunk: Option<usize>,
}

/// A positive decimal count for `option`, at most `max` (`unit` names what it counts).
fn parse_count(
    option: &'static str,
    text: &str,
    max: usize,
    unit: &'static str,
) -> Result<usize, CmdlineError> {
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || text.bytes().all(|b| b == b'0')
    {
        return Err(CmdlineError::NotACount {
            option,
            value: text.to_string(),
        });
    }
    match text.parse::<usize>() {
        Ok(n) if n <= max => Ok(n),
        // Digits only and not zero: the only other failure is overflow.
        _ => Err(CmdlineError::TooLarge {
            option,
            value: text.to_string(),
            max,
            unit,
        }),
    }
}

/// Parses `kcapi`'s arguments: `-e|-d -c <cipher> -k <hex> [-i <hex>] -p <hex> [-d <n>]
/// [-s <bytes>]`, each once. `-d` followed by digits is libkcapi's repeat count (`-d 2`: the
/// data twice, as two chunks of one stream); a bare `-d` decrypts.
/// Values are taken exactly, empty ones included (the device layer then names what is wrong
/// with an empty key or data).
pub fn parse_kcapi(args: &[&str]) -> Result<KcapiRequest, CmdlineError> {
    let mut direction = None;
    let mut cipher = None;
    let (mut key, mut iv, mut data) = (None, None, None);
    let (mut repeat, mut chunk) = (None, None);
    let mut words = args.iter().peekable();
    while let Some(&word) = words.next() {
        if word == "-d"
            && let Some(&&count) = words
                .peek()
                .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))
        {
            words.next();
            if repeat
                .replace(parse_count("-d", count, MAX_KCAPI_BYTES, "repetitions")?)
                .is_some()
            {
                return Err(CmdlineError::RepeatedOption { option: "-d <n>" });
            }
            continue;
        }
        let option: &'static str = match word {
            "-e" => "-e",
            "-d" => "-d",
            "-c" => "-c",
            "-k" => "-k",
            "-i" => "-i",
            "-p" => "-p",
            "-s" => "-s",
            other => {
                return Err(CmdlineError::UnknownOption {
                    word: other.to_string(),
                });
            }
        };
        if option == "-e" || option == "-d" {
            let d = if option == "-e" {
                Direction::Encrypt
            } else {
                Direction::Decrypt
            };
            match direction.replace(d) {
                None => {}
                Some(old) if old == d => return Err(CmdlineError::RepeatedOption { option }),
                Some(_) => return Err(CmdlineError::BothDirections),
            }
            continue;
        }
        let value = words
            .next()
            .copied()
            .ok_or(CmdlineError::MissingValue { option })?;
        let repeated = match option {
            "-c" => cipher
                .replace(Cipher::from_kcapi_name(value).ok_or_else(|| {
                    CmdlineError::UnknownCipher {
                        name: value.to_string(),
                    }
                })?)
                .is_some(),
            "-k" => key.replace(parse_hex(option, value)?).is_some(),
            "-i" => iv.replace(parse_hex(option, value)?).is_some(),
            "-s" => chunk
                .replace(parse_count(
                    option,
                    value,
                    MAX_KCAPI_CHUNK,
                    "bytes (one stream request)",
                )?)
                .is_some(),
            _ => data.replace(parse_hex(option, value)?).is_some(),
        };
        if repeated {
            return Err(CmdlineError::RepeatedOption { option });
        }
    }
    let request = KcapiRequest {
        direction: direction.ok_or(CmdlineError::Missing {
            what: "give -e (encrypt) or -d (decrypt)",
        })?,
        cipher: cipher.ok_or(CmdlineError::Missing {
            what: "give a cipher with -c",
        })?,
        key: key.ok_or(CmdlineError::Missing {
            what: "give a key with -k",
        })?,
        iv: iv.unwrap_or_default(),
        data: data.ok_or(CmdlineError::Missing {
            what: "give the data with -p",
        })?,
        repeat,
        chunk,
    };
    if request.repeat.is_some() || request.chunk.is_some() {
        if request.data.is_empty() {
            return Err(CmdlineError::NoData);
        }
        let times = request.repeat.unwrap_or(1);
        if request
            .data
            .len()
            .checked_mul(times)
            .is_none_or(|total| total > MAX_KCAPI_BYTES)
        {
            return Err(CmdlineError::DataTooLarge {
                bytes: request.data.len(),
                times,
                max: MAX_KCAPI_BYTES,
            });
        }
    }
    // Two equal halves make XTS's tweak key its data key: Linux's xts_verify_key
    // (include/crypto/xts.h) refuses such a key when weak keys are forbidden, OpenSSL always.
    if request.cipher == Cipher::AesXts
        && request.key.len().is_multiple_of(2)
        && !request.key.is_empty()
        && request.key[..request.key.len() / 2] == request.key[request.key.len() / 2..]
    {
        return Err(CmdlineError::XtsKeyHalvesEqual);
    }
    Ok(request)
}

#[cfg(test)]
mod tests;
