//! Host tests of the command-line parser.

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
fn counts_and_sizes_are_bounded() {
    let base =
        "-e -c cbc(aes) -k 00112233445566778899aabbccddeeff -p 00112233445566778899aabbccddeeff";
    for (extra, want) in [
        (
            "-d 18446744073709551615",
            CmdlineError::TooLarge {
                option: "-d",
                value: "18446744073709551615".into(),
                max: MAX_KCAPI_BYTES,
                unit: "repetitions",
            },
        ),
        (
            "-d 10000000",
            CmdlineError::TooLarge {
                option: "-d",
                value: "10000000".into(),
                max: MAX_KCAPI_BYTES,
                unit: "repetitions",
            },
        ),
        (
            "-d 65537",
            CmdlineError::DataTooLarge {
                bytes: 16,
                times: 65537,
                max: MAX_KCAPI_BYTES,
            },
        ),
        (
            "-s 99999999999999999999999",
            CmdlineError::TooLarge {
                option: "-s",
                value: "99999999999999999999999".into(),
                max: MAX_KCAPI_CHUNK,
                unit: "bytes (one stream request)",
            },
        ),
        (
            "-s 65537",
            CmdlineError::TooLarge {
                option: "-s",
                value: "65537".into(),
                max: MAX_KCAPI_CHUNK,
                unit: "bytes (one stream request)",
            },
        ),
        (
            "-s 0",
            CmdlineError::NotACount {
                option: "-s",
                value: "0".into(),
            },
        ),
    ] {
        assert_eq!(kcapi(&format!("{base} {extra}")), Err(want), "{extra}");
    }
    let msg = format!(
        "{}",
        kcapi(&format!("{base} -s 99999999999999999999999")).unwrap_err()
    );
    assert!(msg.contains("too large: at most 65536 bytes"), "{msg}");
    let msg = format!("{}", kcapi(&format!("{base} -d 65537")).unwrap_err());
    assert!(msg.contains("(1048576 bytes)"), "{msg}");
    // At the limits: accepted.
    assert_eq!(
        kcapi(&format!("{base} -d 65536")).unwrap().repeat,
        Some(65536)
    );
    assert_eq!(
        kcapi(&format!("{base} -s 65536")).unwrap().chunk,
        Some(65536)
    );
}

#[test]
fn empty_data_is_refused_in_chunks_too() {
    for extra in ["-d 2", "-s 16", "-d 2 -s 16"] {
        let line = format!("-e -c cbc(aes) -k 00112233445566778899aabbccddeeff -p '' {extra}");
        let e = kcapi(&line).unwrap_err();
        assert_eq!(e, CmdlineError::NoData, "{extra}");
        assert_eq!(format!("{e}"), "the request has no data");
    }
}

#[test]
fn xts_keys_with_equal_halves_are_refused() {
    let half = "000102030405060708090a0b0c0d0e0f";
    for key in [format!("{half}{half}"), format!("{half}{half}{half}{half}")] {
        let e = kcapi(&format!("-e -c xts(aes) -k {key} -i {half} -p {half}")).unwrap_err();
        assert_eq!(e, CmdlineError::XtsKeyHalvesEqual);
        assert!(format!("{e}").contains("halves of the xts(aes) key are equal"));
    }
    let other = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
    assert!(
        kcapi(&format!(
            "-e -c xts(aes) -k {half}{other} -i {half} -p {half}"
        ))
        .is_ok()
    );
    // Other ciphers take any key.
    assert!(
        kcapi(&format!(
            "-e -c cbc(aes) -k {half}{half} -i {half} -p {half}"
        ))
        .is_ok()
    );
}

#[test]
fn the_unknown_option_error_names_every_option() {
    let msg = format!("{}", kcapi("-e -q").unwrap_err());
    for option in [
        "-e",
        "-d",
        "-c",
        "-k",
        "-i",
        "-p",
        "-d <n>",
        "-s <bytes>",
        "-x 4",
        "-o",
        "-j",
        "-t",
    ] {
        assert!(msg.contains(option), "{option} missing: {msg}");
    }
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
