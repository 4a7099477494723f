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

/// An empty buffer with room for `len` bytes, or why the heap cannot hold them: a failed
/// allocation would panic, and nothing on the command line may panic the kernel.
fn buffer(len: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut buffer = Vec::new();
    buffer.try_reserve_exact(len).map_err(|_| {
        format!(
            "{len} bytes of {what} do not fit in the kernel's heap ({} bytes free); give less data or more RAM (VCRYPT_MEM)",
            crate::mm::heap::usage().1
        )
    })?;
    Ok(buffer)
}

fn run(args: &[&str]) -> Result<Vec<u8>, String> {
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
        // One chained operation over the whole input, in chunks of one stream. The parser
        // bounds the total by MAX_KCAPI_BYTES; the heap of a small guest may hold less.
        let times = request.repeat.unwrap_or(1);
        let total = request.data.len() * times;
        let mut input = buffer(total, "input")?;
        for _ in 0..times {
            input.extend_from_slice(&request.data);
        }
        let mut out = buffer(total, "output")?;
        let chunk = request.chunk.unwrap_or(request.data.len()).max(1);
        let mut stream = session.stream(&request.iv).map_err(|e| format!("{e}"))?;
        stream
            .process(input.chunks(chunk), |o| out.extend_from_slice(o))
            .map_err(|e| format!("{e}"))?;
        drop(stream);
        session
            .close()
            .map_err(|e| format!("destroying the session: {e}"))?;
        return Ok(out);
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
    Ok(out)
}

/// Prints `bytes` as one line of hex, a piece at a time (no second copy of a large result).
fn print_hex(bytes: &[u8]) {
    for piece in bytes.chunks(512) {
        let hex: String = piece.iter().map(|b| format!("{b:02x}")).collect();
        crate::print!("{hex}");
    }
    println!();
}

/// Runs the command and exits QEMU.
pub fn main(args: &[&str]) -> ! {
    if args.contains(&"-x") {
        crate::kcapi_rsa::main(args)
    }
    let result = run(args);
    // The profile (profile=on) before the result: the result is the last line.
    qemu::run_exit_hook();
    match result {
        Ok(bytes) => {
            print_hex(&bytes);
            qemu::exit(ExitCode::Success)
        }
        Err(e) => {
            println!("error: kcapi: {e}");
            println!("{USAGE}");
            qemu::exit(ExitCode::Failure)
        }
    }
}
