//! `cargo run -- kcapi -e|-d -c <cipher> -k <hex key> -i <hex iv> -p <hex data>`: one cipher
//! operation on the device, like libkcapi's `kcapi` tool. Prints the hex result, or one error
//! line and a failing exit status.
//!
//! Chained streams (libkcapi's `kcapi -d 2 ...`, as in the AF_ALG serialization discussion of
//! January 2018, docs/DESIGN.md "Sources"): `-d <n>` submits the data n times as n
//! consecutive chunks of one stream (libkcapi's `--execloops` with its AIO cipher type), and
//! `-s <bytes>` splits the (repeated) data into chunks of that size; either prints the result of
//! one chained operation over the whole input. `-d` without a number means decrypt.
//!
//! `-x 4 ...` is RSA: see [`crate::kcapi_rsa`].

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use vcrypt_drivers::cmdline;
use vcrypt_drivers::crypto::{Direction, Session};

use crate::arch::qemu::{self, ExitCode};
use crate::println;
use crate::virtio::crypto::devices;

const USAGE: &str = "usage: kcapi -e|-d -c <cbc(aes)|ecb(aes)|ctr(aes)|xts(aes)> -k <hex key> [-i <hex iv>] -p <hex data> [-d <chunks>] [-s <chunk bytes>]";

/// Parses hex digits strictly; `option` names the option in the error.
pub fn parse_hex(option: &'static str, text: &str) -> Result<Vec<u8>, String> {
    cmdline::parse_hex(option, text).map_err(|e| format!("{e}"))
}

fn run(args: &[&str]) -> Result<String, String> {
    let request = cmdline::parse_kcapi(args).map_err(|e| format!("{e}"))?;
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
