//! `bench rsa`: RSA operations per second through the akcipher service — sign, verify, encrypt
//! and decrypt, for 1024- and 2048-bit keys, at 1 and 16 requests in flight — with busy % per
//! CPU. Every answer goes through the driver's checks (a signature is verified in software
//! before it is returned), so the figures include them.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use vcrypt_drivers::crypto::{RsaHash, RsaKeyKind, RsaOp, RsaSession};

use super::BenchConfig;
use super::report::{Row, busy_text, per_second, progress, run_workers, trips_text};
use crate::arch::{trips, tsc};
use crate::println;
use crate::selftest::rsa_vectors as v;

fn hex(text: &str) -> Result<Vec<u8>, String> {
    crate::kcapi::parse_hex("bench key", text)
}

fn point(
    config: &BenchConfig,
    bits: usize,
    op: RsaOp,
    in_flight: usize,
) -> Result<(u64, Vec<u32>, u64), String> {
    let device = config.device;
    let workers = in_flight.min(crate::arch::percpu::cpu_count());
    let window = in_flight / workers;
    let (private_der, public_der) = match bits {
        1024 => (v::EX1_1024_DER, v::EX1_1024_PUB_DER),
        _ => (v::EX15_2048_DER, v::EX15_2048_PUB_DER),
    };
    run_workers(workers, config.point_ns, move |w, deadline| {
        let err = |e: vcrypt_drivers::error::Error| format!("{bits} bits {}: {e}", op.name());
        let private = RsaSession::new(
            device,
            RsaKeyKind::Private,
            RsaHash::Sha256,
            &hex(private_der)?,
        )
        .map_err(err)?;
        let public = RsaSession::new(
            device,
            RsaKeyKind::Public,
            RsaHash::Sha256,
            &hex(public_der)?,
        )
        .map_err(err)?;
        let digest = RsaHash::Sha256.digest(&(w as u64).to_le_bytes());
        let message = [0x5au8; 64];
        let signature = private.sign(&digest).map_err(err)?;
        let ciphertext = public.encrypt(&message).map_err(err)?;
        let (session, input, sig): (&RsaSession<_>, &[u8], &[u8]) = match op {
            RsaOp::Sign => (&private, &digest, &[]),
            RsaOp::Verify => (&public, &digest, &signature),
            RsaOp::Encrypt => (&public, &message, &[]),
            RsaOp::Decrypt => (&private, &ciphertext, &[]),
        };
        let mut pending = VecDeque::new();
        let mut ops = 0u64;
        loop {
            // At least one request, even when the set-up took the whole point.
            let running = tsc::now_ns() < deadline || (ops == 0 && pending.is_empty());
            if running && pending.len() < window {
                pending.push_back(session.start(op, input, sig).map_err(err)?);
                continue;
            }
            let Some(request) = pending.pop_front() else {
                break;
            };
            request.wait().map_err(err)?;
            ops += 1;
        }
        Ok(ops)
    })
}

pub fn run(config: &BenchConfig) -> Result<Vec<Row>, String> {
    let mut points = Vec::new();
    for bits in [1024usize, 2048] {
        for op in RsaOp::ALL {
            for in_flight in [1usize, 16] {
                points.push((bits, op, in_flight));
            }
        }
    }
    let mut rows = Vec::new();
    let mut table = Vec::new();
    for (i, &(bits, op, in_flight)) in points.iter().enumerate() {
        progress(
            "rsa",
            i,
            points.len(),
            &format!("{bits} bits {}, {in_flight} in flight", op.name()),
        );
        let trips_before = trips::all_cpus();
        let (ops, busy, elapsed) = point(config, bits, op, in_flight)?;
        let trips = trips::all_cpus().since(&trips_before);
        let ops_s = per_second(ops, elapsed);
        table.push(format!(
            "{bits:>5} {:<8} {in_flight:>9} {ops_s:>9} {:>8}   {}",
            op.name(),
            trips_text(&trips, ops),
            busy_text(&busy)
        ));
        rows.push(
            Row::new("rsa")
                .num("bits", bits)
                .str("op", op.name())
                .num("in_flight", in_flight)
                .num("ops_per_s", ops_s)
                .busy(&busy)
                .trips(&trips, ops)
                .num("duration_ms", elapsed / 1_000_000)
                .plot("in_flight", &["ops_per_s"], &["bits", "op"], &[])
                .units(&[
                    ("bits", "bits"),
                    ("in_flight", "requests"),
                    ("ops_per_s", "ops/s"),
                    ("busy_pct", "%"),
                    ("busy_sum_pct", "%"),
                    ("duration_ms", "ms"),
                ])
                .emit(),
        );
    }
    println!("bench rsa: PKCS#1 v1.5 (sha256) through the akcipher service, answers checked");
    println!(" bits op       in_flight     ops/s trips/1k   busy per CPU (sum)");
    for line in table {
        println!("{line}");
    }
    Ok(rows)
}
