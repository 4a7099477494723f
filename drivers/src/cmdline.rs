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

/// The switches the kernel knows, with the values each takes (for messages).
pub const SWITCHES: &[(&str, &str)] = &[
    ("log", "error|warn|info|debug|trace|off"),
    ("ctrl", "sleep|poll"),
    ("kick", "unlocked|locked"),
    ("unadvertised", "refuse|try"),
    ("dur", "milliseconds per benchmark point"),
    ("queues", "percpu|shared"),
    ("chain", "pipelined|serial"),
    ("profile", "off|on"),
    ("event_idx", "on|off"),
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
    Missing {
        what: &'static str,
    },
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
                "unknown option {} (options: -e, -d, -c, -k, -i, -p)",
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
            CmdlineError::NotACount { option, value } => {
                write!(f, "{option}: {} is not a positive number", shown(value))
            }
            CmdlineError::Missing { what } => write!(f, "{what}"),
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

/// A positive count for `option`.
fn parse_count(option: &'static str, text: &str) -> Result<usize, CmdlineError> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(CmdlineError::NotACount {
            option,
            value: text.to_string(),
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
            if repeat.replace(parse_count("-d", count)?).is_some() {
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
            "-s" => chunk.replace(parse_count(option, value)?).is_some(),
            _ => data.replace(parse_hex(option, value)?).is_some(),
        };
        if repeated {
            return Err(CmdlineError::RepeatedOption { option });
        }
    }
    Ok(KcapiRequest {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use proptest::prelude::*;

    fn words(line: &str) -> Vec<String> {
        split_words(line.as_bytes())
            .unwrap()
            .into_iter()
            .map(|w| String::from_utf8(w).unwrap())
            .collect()
    }

    #[test]
    fn quoting_rules() {
        assert_eq!(words("  a  b\tc\n"), vec!["a", "b", "c"]);
        assert_eq!(words("'' x"), vec!["", "x"]);
        assert_eq!(
            words("'a b' 'it''s' ab'cd'ef"),
            vec!["a b", "it's", "abcdef"]
        );
        assert_eq!(words("''''"), vec!["'"]);
        assert_eq!(
            split_words(b"a 'b"),
            Err(CmdlineError::UnterminatedQuote { at: 2 })
        );
        assert_eq!(
            split_words(b"'''"),
            Err(CmdlineError::UnterminatedQuote { at: 0 })
        );
    }

    #[test]
    fn switches_are_known_and_once() {
        let c = Cmdline::parse(b"'kcapi' 'log=debug' '-k' ''").unwrap();
        assert_eq!(c.command(), "kcapi");
        assert_eq!(c.args(), vec!["-k", ""]);
        assert_eq!(c.switch("log"), Some("debug"));
        assert_eq!(c.switch("ctrl"), None);
        let e = Cmdline::parse(b"kik=locked").unwrap_err();
        assert_eq!(
            e,
            CmdlineError::UnknownSwitch {
                word: "kik=locked".into()
            }
        );
        let msg = format!("{e}");
        assert!(msg.contains("\"kik=locked\"") && msg.contains("kick=unlocked|locked"));
        assert!(matches!(
            Cmdline::parse(b"foo=bar"),
            Err(CmdlineError::UnknownSwitch { .. })
        ));
        assert_eq!(
            Cmdline::parse(b"ctrl=poll test ctrl=sleep"),
            Err(CmdlineError::RepeatedSwitch { key: "ctrl".into() })
        );
        // Not switches: an option with '=', a word whose "key" is not an identifier.
        let c = Cmdline::parse(b"kcapi -k=00 A=b").unwrap();
        assert_eq!(c.words, vec!["kcapi", "-k=00", "A=b"]);
        assert_eq!(Cmdline::parse(b"").unwrap().command(), "test");
    }

    #[test]
    fn non_utf8_and_too_long_are_refused() {
        let e = Cmdline::parse(b"test \xff\xfe").unwrap_err();
        assert_eq!(
            e,
            CmdlineError::NotUtf8 {
                word: 2,
                shown: "\\xff\\xfe".into()
            }
        );
        let long = vec![b'a'; MAX_CMDLINE_BYTES + 1];
        assert_eq!(
            Cmdline::parse(&long),
            Err(CmdlineError::TooLong {
                len: MAX_CMDLINE_BYTES + 1,
                max: MAX_CMDLINE_BYTES
            })
        );
        assert!(Cmdline::parse(&long[..MAX_CMDLINE_BYTES]).is_ok());
    }

    #[test]
    fn hex_is_strict() {
        assert_eq!(parse_hex("-k", "00aAfF9").unwrap_err(), {
            CmdlineError::OddHex {
                option: "-k",
                value: "00aAfF9".into(),
            }
        });
        assert_eq!(parse_hex("-k", "00aAfF").unwrap(), vec![0, 0xaa, 0xff]);
        assert_eq!(parse_hex("-k", "").unwrap(), Vec::<u8>::new());
        for bad in [
            "+b7e151628aed2a6abf7158809cf4f3c",
            "2b+e",
            "0x00",
            " 0",
            "é0",
            "-1",
        ] {
            assert!(
                matches!(parse_hex("-k", bad), Err(CmdlineError::NotHex { .. })),
                "{bad} accepted"
            );
        }
        let msg = format!("{}", parse_hex("-k", "2b7g").unwrap_err());
        assert!(msg.starts_with("-k: \"2b7g\" is not hexadecimal"), "{msg}");
        // Non-ASCII is shown as UTF-8 (escaped if not printable), never as Latin-1 bytes.
        let msg = format!("{}", parse_hex("-k", "ab\u{e9}\u{1}").unwrap_err());
        assert!(msg.contains("ab\u{e9}\\u{1}\""), "{msg}");
    }

    fn kcapi(line: &str) -> Result<KcapiRequest, CmdlineError> {
        let w = words(line);
        let args: Vec<&str> = w.iter().map(|s| s.as_str()).collect();
        parse_kcapi(&args)
    }

    #[test]
    fn kcapi_options() {
        let r = kcapi("-e -c cbc(aes) -k 00112233 -i '' -p ''").unwrap();
        assert_eq!(r.direction, Direction::Encrypt);
        assert_eq!(r.cipher, Cipher::AesCbc);
        assert_eq!(r.key, vec![0, 0x11, 0x22, 0x33]);
        assert!(r.iv.is_empty() && r.data.is_empty());
        // An empty key is an empty key, not a reason to swallow the next option.
        assert_eq!(kcapi("-d -c ecb(aes) -k '' -p 00").unwrap().key, vec![]);
        for (line, option) in [
            ("-e -c cbc(aes) -k 00 -k 11 -p 00", "-k"),
            ("-e -c cbc(aes) -k 00 -p 00 -p 11", "-p"),
            ("-e -c cbc(aes) -c cbc(aes) -k 00 -p 00", "-c"),
            ("-e -e -c cbc(aes) -k 00 -p 00", "-e"),
            ("-d -d -c cbc(aes) -k 00 -p 00", "-d"),
            ("-e -c cbc(aes) -i 00 -i 00 -k 00 -p 00", "-i"),
        ] {
            assert_eq!(
                kcapi(line),
                Err(CmdlineError::RepeatedOption { option }),
                "{line}"
            );
        }
        assert_eq!(
            kcapi("-e -d -c cbc(aes) -k 00 -p 00"),
            Err(CmdlineError::BothDirections)
        );
        assert_eq!(
            kcapi("-e -c cbc(aes) -k"),
            Err(CmdlineError::MissingValue { option: "-k" })
        );
        assert!(matches!(
            kcapi("-e -x"),
            Err(CmdlineError::UnknownOption { .. })
        ));
        assert!(matches!(
            kcapi("-e -c gcm(aes)"),
            Err(CmdlineError::UnknownCipher { .. })
        ));
        assert!(matches!(
            kcapi("-e -c cbc(aes) -p 00"),
            Err(CmdlineError::Missing { .. })
        ));
    }

    #[test]
    fn long_values_are_shown_cut_with_their_length() {
        let value = "g".repeat(1000);
        let msg = format!("{}", parse_hex("-p", &value).unwrap_err());
        assert!(msg.contains("...\" (1000 characters)"), "{msg}");
        assert!(msg.len() < 200, "{msg}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes: the parser answers (Ok or Err), never panics, and every message is one line.
        #[test]
        fn arbitrary_bytes_never_panic(line in proptest::collection::vec(any::<u8>(), 0..400)) {
            match Cmdline::parse(&line) {
                Ok(c) => {
                    let _ = parse_kcapi(&c.args());
                    for w in c.args() {
                        if let Err(e) = parse_hex("-p", w) {
                            prop_assert!(!alloc::string::ToString::to_string(&e).contains('\n'));
                        }
                    }
                }
                Err(e) => prop_assert!(!alloc::string::ToString::to_string(&e).contains('\n')),
            }
        }

        /// Biased towards the interesting bytes: quotes, spaces, '=', '-', hex digits.
        #[test]
        fn quote_heavy_lines_never_panic(line in "['\"= \\-a-fk0-9\u{e9}\u{0}\t]{0,200}") {
            if let Ok(c) = Cmdline::parse(line.as_bytes()) {
                let _ = parse_kcapi(&c.args());
            }
        }

        /// What run-qemu.sh writes comes back exactly, whatever the words (empty ones included).
        #[test]
        fn quoting_round_trips(ws in proptest::collection::vec(
            proptest::collection::vec(1u8..=255, 0..20), 0..10)) {
            let line = quote_words(&ws);
            prop_assert_eq!(split_words(&line).unwrap(), ws);
        }

        /// Hex: any byte string printed as hex (either case) parses back to itself.
        #[test]
        fn hex_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64), upper: bool) {
            let text: String = bytes.iter().map(|b| if upper { format!("{b:02X}") } else { format!("{b:02x}") }).collect();
            prop_assert_eq!(parse_hex("-k", &text).unwrap(), bytes);
        }
    }
}
