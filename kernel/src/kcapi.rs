//! `cargo run -- kcapi -e|-d -c <cipher> -k <hex key> -i <hex iv> -p <hex data>`: one cipher
//! operation on the device, like libkcapi's `kcapi` tool. Prints the hex result, or one error
//! line and a failing exit status.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{Cipher, Direction, Session};

use crate::arch::qemu::{self, ExitCode};
use crate::println;
use crate::virtio::crypto::devices;

const USAGE: &str = "usage: kcapi -e|-d -c <cbc(aes)|ecb(aes)|ctr(aes)|xts(aes)> -k <hex key> [-i <hex iv>] -p <hex data>";

struct Request {
    direction: Direction,
    cipher: Cipher,
    key: Vec<u8>,
    iv: Vec<u8>,
    data: Vec<u8>,
}

/// Parses hex digits; `flag` names the option in the error.
pub fn parse_hex(flag: &str, text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
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
    let mut words = args.iter();
    while let Some(&flag) = words.next() {
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
            other => return Err(format!("unknown option \"{other}\"")),
        }
    }
    Ok(Request {
        direction: direction.ok_or("give -e (encrypt) or -d (decrypt)")?,
        cipher: cipher.ok_or("give a cipher with -c")?,
        key: key.ok_or("give a key with -k")?,
        iv: iv.unwrap_or_default(),
        data: data.ok_or("give the data with -p")?,
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
