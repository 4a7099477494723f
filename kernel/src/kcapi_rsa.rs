//! `cargo run -- kcapi -x 4 -o <0|1|2|3> -c 'pkcs1pad(rsa,<hash>)' -j <hex DER key> -p <hex>
//! [-t <hex signature>]`: one RSA operation on the device, like libkcapi's `kcapi -x 4`
//! (asymmetric cipher). `-o`: 0 encrypt (public key, `-p` the message), 1 decrypt (private key,
//! `-p` the ciphertext), 2 sign (private key, `-p` the message digest), 3 verify (public key, `-p`
//! the digest, `-t` the signature). The key is PKCS#1 DER (`RSAPublicKey` or `RSAPrivateKey`).
//! Prints the hex result (`ok` for a signature that verifies), or one error line and a failing
//! exit status (a bad signature included).
//!
//! A 1024-bit private key is about 1,220 hex digits: the command line must carry them.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{RsaHash, RsaKeyKind, RsaOp, RsaSession};
use vcrypt_drivers::error::Error;

use crate::arch::qemu::{self, ExitCode};
use crate::kcapi::parse_hex;
use crate::println;
use crate::virtio::crypto::devices;

const USAGE: &str = "usage: kcapi -x 4 -o <0 encrypt|1 decrypt|2 sign|3 verify> -c 'pkcs1pad(rsa,<sha1|sha256|sha512>)' -j <hex PKCS#1 DER key> -p <hex input> [-t <hex signature>]";

struct Request {
    op: RsaOp,
    hash: RsaHash,
    key: Vec<u8>,
    input: Vec<u8>,
    signature: Vec<u8>,
}

fn parse(args: &[&str]) -> Result<Request, String> {
    let (mut op, mut hash, mut key, mut input, mut signature) = (None, None, None, None, None);
    let mut words = args.iter();
    let mut seen: Vec<&str> = Vec::new();
    while let Some(&flag) = words.next() {
        // Each option once, as for the cipher command: a repeated one is a typo, not an override.
        if seen.contains(&flag) {
            return Err(format!("{flag} given twice"));
        }
        seen.push(flag);
        let mut value = || {
            words
                .next()
                .copied()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-x" => {
                let kind = value()?;
                if kind != "4" {
                    return Err(format!(
                        "-x {kind}: only 4 (asymmetric cipher) is known here; ciphers take -e/-d"
                    ));
                }
            }
            "-o" => {
                let text = value()?;
                op = Some(match text {
                    "0" => RsaOp::Encrypt,
                    "1" => RsaOp::Decrypt,
                    "2" => RsaOp::Sign,
                    "3" => RsaOp::Verify,
                    _ => {
                        return Err(format!(
                            "-o: \"{text}\" is not 0 (encrypt), 1 (decrypt), 2 (sign) or 3 (verify)"
                        ));
                    }
                });
            }
            "-c" => {
                let name = value()?;
                hash = Some(RsaHash::from_kcapi_name(name).ok_or_else(|| {
                    format!("-c: unknown algorithm \"{name}\" (known: pkcs1pad(rsa,sha1|sha224|sha256|sha384|sha512))")
                })?);
            }
            "-j" => key = Some(parse_hex("-j", value()?)?),
            "-p" => input = Some(parse_hex("-p", value()?)?),
            "-t" => signature = Some(parse_hex("-t", value()?)?),
            other => return Err(format!("unknown option \"{other}\"")),
        }
    }
    let op = op.ok_or("give the operation with -o")?;
    if op == RsaOp::Verify && signature.is_none() {
        return Err("verify (-o 3) needs the signature with -t".into());
    }
    if op != RsaOp::Verify && signature.is_some() {
        return Err("-t is for verify (-o 3) only".into());
    }
    Ok(Request {
        op,
        hash: hash.ok_or("give the algorithm with -c, e.g. -c 'pkcs1pad(rsa,sha256)'")?,
        key: key.ok_or("give the PKCS#1 DER key with -j")?,
        input: input.ok_or("give the input with -p")?,
        signature: signature.unwrap_or_default(),
    })
}

pub(crate) fn run(args: &[&str]) -> Result<String, String> {
    let request = parse(args)?;
    let device = devices().first().ok_or("no virtio-crypto device")?;
    let kind = request.op.needs();
    let session = RsaSession::new(device, kind, request.hash, &request.key).map_err(|e| {
        let which = if kind == RsaKeyKind::Public {
            "public (RSAPublicKey)"
        } else {
            "private (RSAPrivateKey)"
        };
        match e {
            // The key's own faults: say which kind of key the operation takes.
            Error::InvalidKey { .. }
            | Error::WrongKeyKind { .. }
            | Error::InvalidModulusSize { .. }
            | Error::KeyRejected => {
                format!("{e} ({} needs a {which} key)", request.op.name())
            }
            _ if !request.hash.device_implements() => format!(
                "{e} (the device refuses {} sessions: QEMU 7.2's builtin backend implements sha1, sha256 and sha512 only)",
                request.hash.kcapi_name()
            ),
            _ => format!("{e}"),
        }
    })?;
    let out = match request.op {
        RsaOp::Verify => session
            .verify(&request.signature, &request.input)
            .map(|()| Vec::new()),
        op => session
            .start(op, &request.input, &[])
            .and_then(|r| r.wait()),
    }
    .map_err(|e| format!("{e}"))?;
    session
        .close()
        .map_err(|e| format!("destroying the session: {e}"))?;
    if request.op == RsaOp::Verify {
        return Ok("ok".into());
    }
    Ok(out.iter().map(|b| format!("{b:02x}")).collect())
}

/// Runs the command and exits QEMU.
pub fn main(args: &[&str]) -> ! {
    let result = run(args);
    // The profile (profile=on) before the result: the result is the last line.
    qemu::run_exit_hook();
    match result {
        Ok(text) => {
            println!("{text}");
            qemu::exit(ExitCode::Success)
        }
        Err(e) => {
            println!("error: kcapi: {e}");
            println!("{USAGE}");
            qemu::exit(ExitCode::Failure)
        }
    }
}
