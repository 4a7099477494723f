//! `cargo run -- kcapi -e|-d -c <cipher> -k <hex key> -i <hex iv> -p <hex data>`: one cipher
//! operation on the device, like libkcapi's `kcapi` tool. Prints the hex result, or one error
//! line and a failing exit status.
//!
//! Chained streams (the second seed's `kcapi -d 2 ...`): `-d <n>` submits the data n times as n
//! consecutive chunks of one stream (libkcapi's `--execloops` with its AIO cipher type), and
//! `-s <bytes>` splits the (repeated) data into chunks of that size; either prints the result of
//! one chained operation over the whole input. `-d` without a number means decrypt.
//!
//! `-x 4 ...` is RSA: see [`crate::kcapi_rsa`].

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{Cipher, Direction, Session};

use crate::arch::qemu::{self, ExitCode};
use crate::println;
use crate::virtio::crypto::devices;

const USAGE: &str = "usage: kcapi -e|-d -c <cbc(aes)|ecb(aes)|ctr(aes)|xts(aes)> -k <hex key> [-i <hex iv>] -p <hex data> [-d <chunks>] [-s <chunk bytes>]";

struct Request {
    direction: Direction,
    cipher: Cipher,
    key: Vec<u8>,
    iv: Vec<u8>,
    data: Vec<u8>,
    /// `-d <n>`: the data n times, as n chunks of one stream.
    repeat: Option<usize>,
    /// `-s <bytes>`: chunks of this size.
    chunk: Option<usize>,
}

/// A positive count; `flag` names the option in the error.
fn parse_count(flag: &str, text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{flag}: \"{text}\" is not a positive number")),
    }
}

/// Parses hex digits; `flag` names the option in the error.
pub fn parse_hex(flag: &str, text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!(
            "{flag}: \"{text}\" has an odd number of hex digits"
        ));
    }
    (0..text.len() / 2)
        .map(|i| {
            u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
                .map_err(|_| format!("{flag}: \"{text}\" is not hexadecimal"))
        })
        .collect()
}

fn parse(args: &[&str]) -> Result<Request, String> {
    let (mut direction, mut cipher, mut key, mut iv, mut data) = (None, None, None, None, None);
    let (mut repeat, mut chunk) = (None, None);
    let mut words = args.iter().peekable();
    while let Some(&flag) = words.next() {
        // `-d <n>`: n chunks of one stream; a bare `-d`: decrypt.
        if flag == "-d"
            && let Some(n) = words
                .peek()
                .filter(|w| w.bytes().all(|b| b.is_ascii_digit()))
        {
            repeat = Some(parse_count("-d", n)?);
            words.next();
            continue;
        }
        let mut value = || {
            words
                .next()
                .copied()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-e" | "-d" => {
                let d = if flag == "-e" {
                    Direction::Encrypt
                } else {
                    Direction::Decrypt
                };
                if direction.replace(d).is_some_and(|old| old != d) {
                    return Err(String::from("give either -e or -d, not both"));
                }
            }
            "-c" => {
                let name = value()?;
                cipher = Some(Cipher::from_kcapi_name(name).ok_or_else(|| {
                    format!("-c: unknown cipher \"{name}\" (known: cbc(aes), ecb(aes), ctr(aes), xts(aes))")
                })?);
            }
            "-k" => key = Some(parse_hex("-k", value()?)?),
            "-i" => iv = Some(parse_hex("-i", value()?)?),
            "-p" => data = Some(parse_hex("-p", value()?)?),
            "-s" => chunk = Some(parse_count("-s", value()?)?),
            other => return Err(format!("unknown option \"{other}\"")),
        }
    }
    Ok(Request {
        direction: direction.ok_or("give -e (encrypt) or -d (decrypt)")?,
        cipher: cipher.ok_or("give a cipher with -c")?,
        key: key.ok_or("give a key with -k")?,
        iv: iv.unwrap_or_default(),
        data: data.ok_or("give the data with -p")?,
        repeat,
        chunk,
    })
}

fn run(args: &[&str]) -> Result<String, String> {
    let request = parse(args)?;
    let device = devices().first().ok_or("no virtio-crypto device")?;
    let session =
        Session::new(device, request.cipher, request.direction, &request.key).map_err(|e| {
            let hint = if matches!(e, vcrypt_drivers::error::Error::NotSupported { .. }) {
                " (the device does not advertise it; add unadvertised=try to ask it anyway)"
            } else {
                ""
            };
            format!("{e}{hint}")
        })?;
    if request.repeat.is_some() || request.chunk.is_some() {
        // One chained operation over the whole input, in chunks of one stream.
        let input = request.data.repeat(request.repeat.unwrap_or(1));
        let chunk = request.chunk.unwrap_or(request.data.len()).max(1);
        let mut stream = session.stream(&request.iv).map_err(|e| format!("{e}"))?;
        let mut out = Vec::with_capacity(input.len());
        stream
            .process(input.chunks(chunk), |o| out.extend_from_slice(o))
            .map_err(|e| format!("{e}"))?;
        drop(stream);
        session
            .close()
            .map_err(|e| format!("destroying the session: {e}"))?;
        return Ok(out.iter().map(|b| format!("{b:02x}")).collect());
    }
    let mut out = request.data.clone();
    match request.direction {
        Direction::Encrypt => session.encrypt_in_place(&request.iv, &mut out),
        Direction::Decrypt => session.decrypt_in_place(&request.iv, &mut out),
    }
    .map_err(|e| format!("{e}"))?;
    session
        .close()
        .map_err(|e| format!("destroying the session: {e}"))?;
    Ok(out.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs the command and exits QEMU.
pub fn main(args: &[&str]) -> ! {
    if args.contains(&"-x") {
        crate::kcapi_rsa::main(args)
    }
    match run(args) {
        Ok(hex) => {
            println!("{hex}");
            qemu::exit(ExitCode::Success)
        }
        Err(e) => {
            println!("error: kcapi: {e}");
            println!("{USAGE}");
            qemu::exit(ExitCode::Failure)
        }
    }
}
